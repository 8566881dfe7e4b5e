"""`bertforge export`: a Composer checkpoint we wrote (a monolithic .pt, or an FSDP2 sharded directory) -> a
HuggingFace directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bertforge.errors import CheckpointError
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked
from bertforge.train.run_folder import read_checkpoint_state


def load_checkpoint_model(path: str | Path) -> ModernBertForMaskedLM:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    state = read_checkpoint_state(path)
    run_state = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("RunState")), None)
    if run_state is None:
        raise ValueError(f"{path}: not a bertforge checkpoint (no RunState with the model config)")
    model = ModernBertForMaskedLM(ModernBertConfig(**run_state["model_config"]), init=False)
    weights = {k.removeprefix("model."): v for k, v in state["model"].items()}
    load_state_dict_checked(model, weights, source=str(path))
    return model


def export_model(model: ModernBertForMaskedLM, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    """Write ``model`` (and the tokenizer) as a HuggingFace directory; a model with non-finite weights is refused."""
    import torch

    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"refusing to export a model with non-finite weights ({', '.join(broken[:3])}"
                              f"{' ...' if len(broken) > 3 else ''})")
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
