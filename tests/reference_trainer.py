"""An independent masked-LM trainer, for parity with `bertforge train`.

transformers' ``ModernBertForMaskedLM`` trained by a plain PyTorch loop: torch-optimi's StableAdamW with weight
decay on matrices only, the LR schedule written out below from docs/training.md (linear warmup over tokens, then a
1-sqrt/linear/cosine decay over the last ``decay_tokens``, set before each step from the real tokens already
seen), and gradient accumulation that weighs each micro-batch by its masked tokens, so a step's loss is the mean
over every masked token of the step. It shares no training code with bertforge; what it shares is the data (the
batches bertforge's loader produced, one document per padded row here) and the initial weights (an HF directory).

``Mutation`` switches in the mistakes a trainer can make, so a test can show that parity would catch each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from optimi import StableAdamW
from transformers import AutoModelForMaskedLM

IGNORE = -100


@dataclass(frozen=True)
class Mutation:
    decay_everything: bool = False
    """Weight decay on norms and biases too."""
    schedule_one_step_late: bool = False
    """The LR of each step taken from the tokens after it instead of before it."""
    mean_per_micro_batch: bool = False
    """Each micro-batch's mean loss weighed equally, instead of by its masked tokens."""


def lr_at(tokens: int, total: int, peak: float, warmup: int, decay: int, shape: str, floor: float) -> float:
    if warmup and tokens < warmup:
        return peak * tokens / warmup
    start = total - decay
    if not decay or tokens < start:
        return peak
    progress = min((tokens - start) / decay, 1.0)
    left = {"linear": 1 - progress, "cosine": (1 + math.cos(math.pi * progress)) / 2, "1-sqrt": 1 - math.sqrt(progress)}
    return peak * (floor + (1 - floor) * left[shape])


def padded(micro: dict) -> dict[str, torch.Tensor]:
    """A packed micro-batch (flat ids, labels, cu_seqlens) as one document per row, padded, with its mask."""
    cu = micro["cu_seqlens"].tolist()
    length = max(b - a for a, b in zip(cu[:-1], cu[1:], strict=True))
    ids = torch.zeros(len(cu) - 1, length, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for row, (a, b) in enumerate(zip(cu[:-1], cu[1:], strict=True)):
        ids[row, :b - a], labels[row, :b - a], mask[row, :b - a] = micro["input_ids"][a:b], micro["labels"][a:b], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_reference(hf_dir: Path, steps: list[list[dict]], *, total_tokens: int, lr: float, betas: tuple, eps: float,
                    weight_decay: float, schedule: dict, mutation: Mutation = Mutation()):
    """Train the model in ``hf_dir`` on ``steps`` (each a list of packed micro-batches); returns each step's loss
    and the trained model."""
    # sparse_prediction decodes the masked positions only (the loss is the same, the cost a third)
    model = AutoModelForMaskedLM.from_pretrained(hf_dir, attn_implementation="sdpa", reference_compile=False,
                                                 sparse_prediction=True)
    model.train()
    named = list(model.named_parameters())
    decay = [p for _, p in named if p.ndim >= 2 or mutation.decay_everything]
    rest = [p for _, p in named if not (p.ndim >= 2 or mutation.decay_everything)]
    optimizer = StableAdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=betas, eps=eps, decouple_lr=True, triton=False)
    seen, losses = 0, []
    for micro_batches in steps:
        step_tokens = sum(int(m["num_tokens"]) for m in micro_batches)
        at = seen + step_tokens if mutation.schedule_one_step_late else seen
        for group in optimizer.param_groups:
            group["lr"] = lr_at(at, total_tokens, lr, schedule.get("warmup_tokens", 0), schedule.get("decay_tokens", 0),
                                schedule.get("decay_shape", "linear"), schedule.get("min_lr_ratio", 0.0))
        masked = [int((m["labels"] != IGNORE).sum()) for m in micro_batches]
        step_loss = 0.0
        for micro, count in zip(micro_batches, masked, strict=True):
            weight = 1 / len(micro_batches) if mutation.mean_per_micro_batch else count / sum(masked)
            loss = model(**padded(micro)).loss * weight
            loss.backward()
            step_loss += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += step_tokens
        losses.append(step_loss)
    return losses, model
