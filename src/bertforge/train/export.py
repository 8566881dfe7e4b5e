"""`bertforge export`: a Composer checkpoint we wrote (a monolithic .pt, or an FSDP2 sharded directory) -> a
HuggingFace directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked


def _read_checkpoint_state(path: Path) -> dict:
    """The ``state`` of a monolithic checkpoint, or the model and RunState parts of a sharded (DCP) one, read
    in this one process without the optimizer state (no process group needed)."""
    if not path.is_dir():
        return torch.load(path, map_location="cpu", weights_only=False)["state"]
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    if not (path / ".metadata").is_file():
        raise ValueError(f"{path}: a directory but not a sharded checkpoint (no .metadata)")
    reader = FileSystemReader(str(path))
    keys = {key for key in reader.read_metadata().state_dict_metadata
            if key.startswith(("state.model.", "state.callbacks.RunState.model_config"))}
    return _load_state_dict_from_keys(keys, storage_reader=reader)["state"]


def load_checkpoint_model(path: str | Path) -> ModernBertForMaskedLM:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    state = _read_checkpoint_state(path)
    run_state = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("RunState")), None)
    if run_state is None:
        raise ValueError(f"{path}: not a bertforge checkpoint (no RunState with the model config)")
    model = ModernBertForMaskedLM(ModernBertConfig(**run_state["model_config"]), init=False)
    weights = {k.removeprefix("model."): v for k, v in state["model"].items()}
    load_state_dict_checked(model, weights, source=str(path))
    return model


def export_model(model: ModernBertForMaskedLM, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer:
        from bertforge.data.tokenizer import load_tokenizer

        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            load_tokenizer(tokenizer).save_pretrained(tmp)
            for item in Path(tmp).iterdir():
                shutil.move(str(item), out_dir / item.name)
    return out_dir


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    return export_model(load_checkpoint_model(checkpoint), out_dir, tokenizer)
