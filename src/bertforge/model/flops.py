"""Training FLOPs per token and the peak FLOP/s of common GPUs: the two halves of MFU.

Beside the model (not in the trainer) so that the GPU benchmark, which runs without Composer, reports MFU with
exactly the formula a training run logs.
"""

from __future__ import annotations

import torch

from bertforge.model.config import ModernBertConfig

# Dense bf16 peak FLOP/s per device, for MFU when the config gives none.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12, "V100": 125e12}


def flops_per_token(config: ModernBertConfig, mean_doc_len: float, mask_rate: float) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per real token.

    Matmuls of every layer, attention scores over the tokens a query actually sees (its document, or the window
    on local layers), and the head and decoder only for the masked share (sparse prediction).
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * (3 * h * h + h * h + 2 * h * i + i * h)
    attention = 0.0
    for layer in range(layers):
        seen = mean_doc_len if config.is_global_layer(layer) else min(mean_doc_len, config.local_attention + 1)
        attention += 2 * 2 * seen * h
    head = mask_rate * 2 * (h * h + h * config.vocab_size)
    return 3 * (layers * per_layer + attention + head)


def device_peak_flops(configured: float | None) -> float | None:
    if configured:
        return configured
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
