"""How ModernBERT is split for data parallelism, beside the model rather than inside the training loop: the unit
FSDP2 shards and activation checkpointing recomputes is one encoder layer. The trainer (train/run.py) turns this
into Composer's parallelism config."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

from bertforge.model.layers import EncoderLayer


def is_layer(module: nn.Module) -> bool:
    """The sharding and recomputation unit: an encoder layer."""
    return isinstance(module, EncoderLayer)


def mark_fsdp2_units(model: nn.Module) -> None:
    """Tell Composer's FSDP2 to shard each encoder layer, then the whole model (which keeps the tied embedding and
    decoder together), and which modules to recompute when activation checkpointing is on."""
    model.fsdp_wrap_fn = model.activation_checkpointing_fn = is_layer


def checkpoint_layer_activations(model: nn.Module) -> None:
    """Recompute each encoder layer's activations in the backward pass (without FSDP2, which does it itself)."""
    apply_activation_checkpointing(model, check_fn=is_layer)
