"""`bertforge average`: the element-wise mean of several models' weights (checkpoint averaging, as ModernBERT's
released models and model soups / LAWA do), written as a HuggingFace directory that ``init_from``, `eval mlm`,
`finetune` and transformers take.

Each source is a checkpoint of ours (monolithic or sharded), a research-repository checkpoint, or a HuggingFace
ModernBERT directory. They are read one at a time into a running float32 sum, so memory stays at one model plus
the sum whatever their number. Sources of different architectures, or trained with different tokenizers, are
refused naming the first difference: their mean is not a model.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import torch

from bertforge.checkpoint.read import read_model
from bertforge.checkpoint.run_folder import RunFolder
from bertforge.errors import ConfigError
from bertforge.export.folder import export_model
from bertforge.model import ModernBertForMaskedLM


def last_checkpoints(run_dir: str | Path, count: int) -> list[Path]:
    """The ``count`` newest checkpoints of a run folder that verify, oldest first."""
    if count < 1:
        raise ConfigError(f"--last must be at least 1, got {count}")
    valid = list(itertools.islice(RunFolder(run_dir).valid_checkpoints(report=False), count))
    if len(valid) < count:
        raise ConfigError(f"--last {count}: {run_dir} holds {len(valid)} checkpoint(s) that verify; ask for at most "
                          f"{len(valid)}")
    return list(reversed(valid))


def average(sources: list[str | Path], out: str | Path, tokenizer: str | None = None, verified: bool = False) -> Path:
    """Average the models of ``sources`` into the HuggingFace directory ``out``, with ``tokenizer`` (default: the
    one the first source records) beside it; ``verified``: the caller has verified the checkpoints' manifests."""
    if not sources:
        raise ConfigError("nothing to average: name at least one checkpoint or model directory (or RUN --last K)")
    target = Path(out).resolve()
    for source in sources:
        if Path(source).resolve() == target or target in Path(source).resolve().parents:
            raise ConfigError(f"the output folder {out} is the source {source}: writing the mean there would replace "
                              f"it; name a new folder as the last argument (nothing was changed)")
    total: dict[str, torch.Tensor] = {}
    first = None
    for source in sources:
        model, recorded = read_model(source, verified=verified)
        if first is None:
            first, total = (model.config, recorded), {k: v.detach().to(torch.float32).clone()
                                                      for k, v in model.state_dict().items()}
            continue
        _check_same(first, (model.config, recorded), sources[0], source)
        for key, value in model.state_dict().items():
            total[key] += value.detach().to(torch.float32)
        del model
    config, recorded = first

    mean = ModernBertForMaskedLM(config, init=False)
    mean.load_state_dict({k: (v / len(sources)) for k, v in total.items()})
    return export_model(mean, out, tokenizer or recorded.get("tokenizer"), recorded.get("max_length"))


def _check_same(first: tuple, other: tuple, first_source, other_source) -> None:
    (config, recorded), (other_config, other_recorded) = first, other
    mine, theirs = dataclasses.asdict(config), dataclasses.asdict(other_config)
    differing = [key for key in mine if mine[key] != theirs[key]]
    if differing:
        key = differing[0]
        raise ConfigError(f"{other_source} is another architecture than {first_source} ({key}: {theirs[key]} vs "
                          f"{mine[key]}); only models of one architecture can be averaged")
    fingerprints = recorded.get("tokenizer_fingerprint"), other_recorded.get("tokenizer_fingerprint")
    if None not in fingerprints and fingerprints[0] != fingerprints[1]:
        raise ConfigError(f"{other_source} was trained with another tokenizer than {first_source} (fingerprint "
                          f"{fingerprints[1]} vs {fingerprints[0]}); its ids mean other tokens, so the weights "
                          f"cannot be averaged")
