"""Our model as a Composer model: packed micro-batches in, MLM loss and masked-token accuracy out."""

from __future__ import annotations

import torch
from composer.models import ComposerModel
from torchmetrics import Metric

from bertforge.data.loader import MODEL_INPUTS
from bertforge.labels import IGNORE_INDEX
from bertforge.model import ModernBertForMaskedLM
from bertforge.train.precision import autocast


class MaskedAccuracy(Metric):
    """Share of masked positions whose top prediction is the original token."""

    def __init__(self):
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.correct += (predictions == targets).sum()
        self.total += targets.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class MLMComposerModel(ComposerModel):
    """``cpu_bf16``: the forward pass (and the loss, computed in it) under bf16 autocast on a CPU, where Composer
    will not apply amp_bf16 itself (train/precision.py)."""

    def __init__(self, model: ModernBertForMaskedLM, cpu_bf16: bool = False):
        super().__init__()
        self.model = model
        self.cpu_bf16 = cpu_bf16
        self.train_metrics = {"MaskedAccuracy": MaskedAccuracy()}

    def forward(self, batch: dict):
        with autocast("amp_bf16" if self.cpu_bf16 else "fp32", "cpu"):
            return self.model(**{key: batch[key] for key in MODEL_INPUTS})

    def loss(self, outputs, batch: dict) -> torch.Tensor:
        return outputs.loss

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else {}

    def update_metric(self, batch: dict, outputs, metric: Metric) -> None:
        labels = batch["labels"]
        metric.update(outputs.predicted_ids().detach(), labels[labels != IGNORE_INDEX])
