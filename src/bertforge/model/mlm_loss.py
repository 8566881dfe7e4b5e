"""The MLM decoder and cross-entropy fused over chunks of the predicted positions.

The plain loss builds (predictions x vocab) logits, casts them to float32 and keeps them (and their gradient) for
the backward pass: at base size with 30% masking that is about 29k x 50,368 floats, several GiB, per micro-batch
of 96k tokens. Here each chunk's logits live only while that chunk is processed: the forward pass computes the
chunk's loss and, right away, its gradients with respect to the hidden states, the decoder weight and its bias
(softmax minus one-hot, divided by the number of predictions), keeps those, and drops the logits. The backward
pass only scales the kept gradients by the incoming one. The arithmetic is the plain loss's (the same three
matmuls), so the two agree to float rounding; what changes is peak memory: one chunk's logits instead of all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertforge.labels import IGNORE_INDEX


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                chunk: int, need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        wanted_rows = targets != IGNORE_INDEX  # rows that pad a bucketed prediction index carry IGNORE_INDEX
        count = wanted_rows.sum().clamp(min=1)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None \
            else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        predictions = torch.empty_like(targets)
        for start in range(0, targets.shape[0], chunk):
            part = hidden[start:start + chunk]
            logits = F.linear(part, weight, bias).float()
            wanted = targets[start:start + chunk]
            total += F.cross_entropy(logits, wanted, ignore_index=IGNORE_INDEX, reduction="sum")
            predictions[start:start + chunk] = logits.argmax(-1)
            if not need_grad:  # evaluation: the loss and the predictions are all that is wanted
                continue
            # d(sum of losses)/d(logits) = softmax - one-hot; the mean over all predictions divides by count.
            grad_logits = logits.softmax(-1)
            kept = wanted_rows[start:start + chunk]
            grad_logits[torch.arange(wanted.shape[0], device=wanted.device), wanted.clamp(min=0)] -= 1.0
            grad_logits *= kept[:, None] / count
            grad_hidden[start:start + chunk] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight += grad_logits.T @ part.float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype),
                              grad_bias.to(bias.dtype) if grad_bias is not None else None)
        ctx.mark_non_differentiable(predictions)
        return total / count, predictions

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_predictions):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_hidden * grad_loss.to(grad_hidden.dtype), grad_weight * grad_loss.to(grad_weight.dtype),
                grad_bias * grad_loss.to(grad_bias.dtype) if grad_bias is not None else None, None, None, None)


def chunked_mlm_loss(hidden: torch.Tensor, decoder: torch.nn.Linear, targets: torch.Tensor, chunk: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of ``decoder(hidden)`` against ``targets`` (one row per predicted position; rows whose
    target is IGNORE_INDEX pad a bucket and count for nothing), and the top prediction of each row, holding at
    most ``chunk`` rows of logits at a time."""
    if targets.numel() == 0:
        return hidden.sum() * 0.0 + decoder.weight.sum() * 0.0, targets.clone()
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or decoder.weight.requires_grad)
    return _ChunkedLinearCrossEntropy.apply(hidden, decoder.weight, decoder.bias, targets, chunk, need_grad)
