"""Parallelism beside the model, not inside the loop: what DDP or FSDP2 needs from the model, Composer's
parallelism config, activation checkpointing, and the gloo gradient fix that FSDP2 on CPU needs."""

from __future__ import annotations

import torch
from composer.core import Callback, State
from composer.loggers import Logger

from bertforge.model.layers import EncoderLayer
from bertforge.train.config import TrainConfig


def _is_layer(module: torch.nn.Module) -> bool:
    return isinstance(module, EncoderLayer)


def parallelize(model: torch.nn.Module, config: TrainConfig) -> dict | None:
    """Prepare ``model`` for ``config.parallelism``; returns Composer's ``parallelism_config`` (None: DDP, which
    Composer applies by itself when there are several ranks)."""
    if config.parallelism == "fsdp2":
        from composer.utils import FSDP2Config

        # Composer shards each encoder layer, then the whole model (which keeps the tied embedding and decoder
        # together), and recomputes the layers' activations when asked.
        model.fsdp_wrap_fn = model.activation_checkpointing_fn = _is_layer
        return {"fsdp": FSDP2Config(state_dict_type=config.checkpoint.state_dict_type,
                                    activation_checkpointing=config.activation_checkpointing)}
    if config.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(model, check_fn=_is_layer)
    return None


def parallelism_callbacks(config: TrainConfig, world_size: int) -> list[Callback]:
    """Callbacks a parallelism needs on this machine (call after the process group exists)."""
    if config.parallelism == "fsdp2" and world_size > 1 and torch.distributed.get_backend() == "gloo":
        return [GlooFsdpGradientAverage(world_size)]
    return []


class GlooFsdpGradientAverage(Callback):
    """Divide FSDP2 gradients by the world size on gloo (CPU).

    FSDP2 reduce-scatters fp32 gradients with ReduceOp.AVG; gloo's reduce-scatter sums instead, so without this
    every gradient is world_size times too large (Adam hides most of it, weight decay, eps and grad norms do not).
    """

    def __init__(self, world_size: int):
        self.world_size = world_size

    def after_train_batch(self, state: State, logger: Logger) -> None:  # once per step, after all micro-batches
        for param in state.model.parameters():
            if param.grad is not None:
                param.grad.div_(self.world_size)
