"""`bertforge export`: a Composer checkpoint we wrote (monolithic or FSDP2-sharded) -> a HuggingFace directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked


def _read_checkpoint(path: Path) -> dict:
    """A monolithic ``.pt`` as is; a sharded (torch.distributed.checkpoint) folder gathered into one."""
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            return torch.load(Path(tmp) / "full.pt", map_location="cpu", weights_only=False)
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint_model(path: str | Path) -> ModernBertForMaskedLM:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    state = _read_checkpoint(path)["state"]
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
