"""The state of a run that is not Composer's own, carried in every checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from composer.core import Callback
from composer.utils import dist

from bertforge.data.provenance import tokenizer_fingerprint


def _absolute(tokenizer: str) -> str:
    """A local tokenizer folder as an absolute path, so that a checkpoint read from another working folder finds
    it (checkpoint/read.py recorded_tokenizer); a hub name as it is."""
    return str(Path(tokenizer).resolve()) if Path(tokenizer).is_dir() else tokenizer


class RunState(Callback):
    """Puts the packed loader's state (stream position, packer buffer, masking RNG), the batch-warmup position, the
    model config and the tokenizer (name and fingerprint) into every checkpoint, so a resumed run continues the data
    exactly and any checkpoint exports on its own, with its own tokenizer only."""

    def __init__(self, loader, steps, config, lineage: dict):
        self.loader = loader
        self.steps = steps
        self.config = config
        self.lineage = lineage
        self.tokenizer_fingerprint = tokenizer_fingerprint(config.data.tokenizer)

    def state_dict(self) -> dict:
        # Every rank's loader state, gathered: a monolithic checkpoint is written by rank 0 alone, and a sharded
        # one keeps a single copy of non-tensor entries, yet each rank packs its own documents.
        return {"loader": dist.all_gather_object(self.loader.state_dict()), "steps": self.steps.state_dict(),
                "model_config": dataclasses.asdict(self.config.model), "run_name": self.config.run_name,
                "lineage": self.lineage, "tokenizer": _absolute(self.config.data.tokenizer),
                "tokenizer_fingerprint": self.tokenizer_fingerprint}

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state["loader"])
        self.steps.load_state_dict(state["steps"])
