"""The ModernBERT research repository's Composer training checkpoints, read into our model.

Those checkpoints (one .pt per save, per phase) hold the stable-phase weights a user branches a decay phase from,
under ``state.model`` with the research code's names: ``model.bert.embeddings.*``,
``model.bert.encoder.layers.N.*``, ``model.bert.final_norm.*``, ``model.head.*``, ``model.decoder.*``. They map
to ours by dropping ``model.``, then ``bert.encoder.layers.N`` -> ``model.layers.N`` and other ``bert.`` ->
``model.``. The file is read with the same restricted unpickler as our own checkpoints: tensors and plain data
only, so a crafted file cannot run code (a class it names is refused by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict

from bertforge.checkpoint.safe_load import load_checkpoint_file
from bertforge.errors import CheckpointError
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import from_hf_config, load_state_dict_checked

_PREFIX = "model.bert."


def is_research_layout(model_state: dict) -> bool:
    return any(key.startswith(_PREFIX) for key in model_state)


def our_name(key: str) -> str | None:
    """A research tensor name -> ours, or None where it has no place in a ModernBERT."""
    name = key.removeprefix("model.")
    if name.startswith("bert.encoder.layers."):
        return "model.layers." + name.removeprefix("bert.encoder.layers.")
    if name.startswith("bert."):
        return "model." + name.removeprefix("bert.")
    return name if name.startswith(("head.", "decoder.")) else None


def research_weights(model_state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """The research names mapped to ours; a tensor with no place in our model is named in the error."""
    out, stray = {}, []
    for key, tensor in model_state.items():
        name = our_name(key)
        if name is None:
            stray.append(key)
        else:
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


@dataclass
class OptimizerMoments:
    """The AdamW-family state of a research checkpoint, by our parameter names."""

    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    step: int
    optimizer: str
    """The optimizer class that wrote it."""


def optimizer_moments(state: dict, params: dict[str, torch.Size], *, source: str) -> OptimizerMoments:
    """The checkpoint's optimizer state for the parameters ``params`` (our names -> shapes); CheckpointError saying
    why where it does not fit: none stored, more than one optimizer, not an AdamW-family state (first and second
    moments), keyed by position instead of name, a parameter missing or of another shape, or mixed step counts."""
    optimizers = state.get("optimizers") or {}
    if not optimizers:
        raise CheckpointError(f"{source} holds no optimizer state")
    if len(optimizers) != 1:
        raise CheckpointError(f"{source} holds {len(optimizers)} optimizers ({', '.join(optimizers)}), not one")
    (kind, saved), = optimizers.items()
    entries = saved.get("state") or {}
    if any(not isinstance(key, str) for key in entries):
        raise CheckpointError(f"{source}: its {kind} state is keyed by parameter position, not name, so it cannot "
                              f"be matched to parameters")
    exp_avg, exp_avg_sq, steps = {}, {}, set()
    for key, entry in entries.items():
        name = our_name(key)
        if name == "decoder.weight" and name not in params:  # tied to the token embedding
            continue
        if name not in params:
            raise CheckpointError(f"{source}: its {kind} state holds '{key}', which has no place in this model")
        if not {"exp_avg", "exp_avg_sq"} <= entry.keys():
            raise CheckpointError(f"{source}: its {kind} state for '{key}' holds {sorted(entry)}, not the AdamW "
                                  f"moments exp_avg and exp_avg_sq")
        for moments, tensor in ((exp_avg, entry["exp_avg"]), (exp_avg_sq, entry["exp_avg_sq"])):
            if tensor.shape != params[name]:
                raise CheckpointError(f"{source}: its {kind} state for '{key}' has shape {tuple(tensor.shape)}, "
                                      f"the model's parameter {tuple(params[name])}")
            moments[name] = tensor
        if "step" in entry:  # torch's AdamW keeps a step per parameter, optimi's StableAdamW one per group
            steps.add(int(entry["step"]))
    steps |= {int(group["step"]) for group in saved.get("param_groups") or [] if "step" in group}
    missing = sorted(set(params) - set(exp_avg))
    if missing:
        raise CheckpointError(f"{source}: its {kind} state has nothing for {len(missing)} parameter(s): "
                              f"{', '.join(missing[:5])}")
    if len(steps) != 1:
        raise CheckpointError(f"{source}: its {kind} state has step counts {sorted(steps) or 'none'}, not one")
    return OptimizerMoments(exp_avg, exp_avg_sq, steps.pop(), kind)


def carry_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inner: str,
                          moments: OptimizerMoments) -> None:
    """Set ``optimizer``'s moments and step count to ``moments``, whatever its AdamW family (its own state layout
    is kept: it is read through torch's distributed state-dict API, edited, and set back, which also shards the
    full tensors under FSDP2). ``inner`` is the name of our ModernBERT inside ``model`` (the Composer model)."""
    options = StateDictOptions(full_state_dict=True)
    current = get_optimizer_state_dict(model, optimizer, options=options)
    for fqn, entry in current["state"].items():
        name = fqn.removeprefix(inner + ".")
        for key, source in (("exp_avg", moments.exp_avg), ("exp_avg_sq", moments.exp_avg_sq)):
            entry[key] = source[name].to(device=entry[key].device, dtype=entry[key].dtype)
        if "step" in entry:
            entry["step"] = _step_like(entry["step"], moments.step)
    for group in current["param_groups"]:
        if "step" in group:
            group["step"] = _step_like(group["step"], moments.step)
    set_optimizer_state_dict(model, optimizer, current, options=options)


def _step_like(old, step: int):
    """``step`` in the type the optimizer keeps it in (a tensor of some dtype, or a number)."""
    return torch.full_like(old, step) if isinstance(old, torch.Tensor) else type(old)(step)
