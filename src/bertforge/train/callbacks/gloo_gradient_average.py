"""FSDP2 over gloo (CPU) sums gradients where it should average them; this callback divides them back."""

from __future__ import annotations

import torch
from composer.core import Callback, State
from composer.loggers import Logger


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


def gloo_gradient_fix(parallelism: str, world_size: int) -> list[Callback]:
    """The callback when this run needs it (FSDP2 with several ranks over gloo; call after the process group
    exists), else nothing."""
    if parallelism == "fsdp2" and world_size > 1 and torch.distributed.get_backend() == "gloo":
        return [GlooFsdpGradientAverage(world_size)]
    return []
