"""Optimizers: StableAdamW (ModernBERT's) or decoupled AdamW, with no weight decay on norms and biases."""

from __future__ import annotations

import torch
from composer.optim import DecoupledAdamW
from optimi import StableAdamW
from torch import nn

from bertforge.train.config import OptimizerConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)  # norms and biases are 1-D
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
    betas = tuple(config.betas)
    if config.name == "stableadamw":
        # optimi reaches for its Triton kernel whenever Triton imports (it ships with CUDA torch), even for CPU
        # tensors; only a CUDA machine can run it.
        return StableAdamW(groups, lr=config.lr, betas=betas, eps=config.eps, decouple_lr=True,
                           triton=torch.cuda.is_available())

    return DecoupledAdamW(groups, lr=config.lr, betas=betas, eps=config.eps)
