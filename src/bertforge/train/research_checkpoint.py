"""The ModernBERT research repository's Composer training checkpoints, read into our model.

Those checkpoints (one .pt per save, per phase) hold the stable-phase weights a user branches a decay phase from,
under ``state.model`` with the research code's names: ``model.bert.embeddings.*``,
``model.bert.encoder.layers.N.*``, ``model.bert.final_norm.*``, ``model.head.*``, ``model.decoder.*``. They map
to ours by dropping ``model.``, then ``bert.encoder.layers.N`` -> ``model.layers.N`` and other ``bert.`` ->
``model.``. The file is read with the same restricted unpickler as our own checkpoints: tensors and plain data
only, so a crafted file cannot run code (a class it names is refused by name).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bertforge.errors import CheckpointError
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import from_hf_config, load_state_dict_checked
from bertforge.train.checkpoint_integrity import load_checkpoint_file

_PREFIX = "model.bert."


def is_research_layout(model_state: dict) -> bool:
    return any(key.startswith(_PREFIX) for key in model_state)


def research_weights(model_state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """The research names mapped to ours; a tensor with no place in our model is named in the error."""
    out, stray = {}, []
    for key, tensor in model_state.items():
        name = key.removeprefix("model.")
        if name.startswith("bert.encoder.layers."):
            name = "model.layers." + name.removeprefix("bert.encoder.layers.")
        elif name.startswith("bert."):
            name = "model." + name.removeprefix("bert.")
        elif not name.startswith(("head.", "decoder.")):
            stray.append(key)
            continue
        out[name] = tensor
    # Layer 0 has no attention norm (the embeddings end in one); a stored one that is the identity is dropped.
    first_norm = out.get("model.layers.0.attn_norm.weight")
    if first_norm is not None and torch.equal(first_norm, torch.ones_like(first_norm)):
        del out["model.layers.0.attn_norm.weight"]
    if stray:
        raise CheckpointError(f"{source}: tensors with no place in a ModernBERT: {', '.join(stray[:10])}")
    return out


def stored_hf_config(state: dict) -> dict | None:
    """The HuggingFace config the checkpoint carries (Composer's HuggingFaceModel keeps it under
    integrations.huggingface.model.config.content), if it is a ModernBERT one."""
    content = (((state.get("integrations") or {}).get("huggingface") or {}).get("model") or {}).get("config") or {}
    content = content.get("content", content)
    return content if isinstance(content, dict) and content.get("model_type") == "modernbert" else None


def read_research_checkpoint(path: str | Path, fallback: ModernBertConfig | None
                             ) -> tuple[ModernBertForMaskedLM, dict]:
    """The model of a research checkpoint (architecture from its stored HF config, else ``fallback``), and the
    checkpoint's ``state`` (for its optimizer state)."""
    path = Path(path)
    state = load_checkpoint_file(path).get("state") or {}
    model_state = state.get("model") or {}
    if not is_research_layout(model_state):
        raise CheckpointError(f"{path}: neither a bertforge checkpoint nor one in the research layout "
                              f"(no 'model.bert.*' tensors under state.model)")
    hf = stored_hf_config(state)
    if hf is not None:
        config = from_hf_config(hf, source=f"{path} (its stored HuggingFace config)")
    elif fallback is not None:
        config = fallback
    else:
        raise CheckpointError(f"{path} stores no HuggingFace config; name the architecture (`--model base`, or "
                              f"the run's `model:`)")
    model = ModernBertForMaskedLM(config, init=False)
    load_state_dict_checked(model, research_weights(model_state, source=str(path)), source=str(path))
    return model, state


def optimizer_note(state: dict, path: str | Path) -> str | None:
    """What happens to the optimizer state a checkpoint holds: bertforge starts the optimizer fresh."""
    optimizers = state.get("optimizers") or {}
    if not optimizers:
        return None
    return (f"{path} holds optimizer state ({', '.join(optimizers)}); it is not carried over: the optimizer "
            f"starts fresh (its moments rebuild within the warmup)")
