"""Which precision a run trains in, and bf16 autocast on CPU where Composer refuses it.

Composer applies ``amp_bf16`` on GPUs only (on a CPU device it raises a ValueError). CPUs with bf16 units (AMX,
or AVX-512 BF16) run bf16 matmuls about 1.5x (tiny) to 2.3x (base) faster than float32 in our model's step, so
on such a CPU bertforge gives Composer ``fp32`` and wraps the forward pass (and the loss, computed inside it) in
``torch.autocast("cpu", torch.bfloat16)`` itself: the same autocast Composer uses on a GPU. Weights, gradients and
optimizer state stay float32 either way. Imports no torch (the trainer and the evaluation import it themselves).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of CPUs with bf16 matmul units (Intel Sapphire Rapids and later, AMD Zen 4 and later)."""


def cpu_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The bf16 flag this CPU has (``amx_bf16`` first), or None (no such unit, or no /proc/cpuinfo to tell)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def resolve_precision(setting: str, device: Literal["cpu", "gpu"], bf16_units: str | None = None
                      ) -> Literal["fp32", "amp_bf16"]:
    """``precision`` as configured ('auto', 'fp32', 'amp_bf16') -> what the run trains in. 'auto' is amp_bf16 on a
    GPU, and on a CPU with bf16 units (``bf16_units``, from cpu_bf16_units()); float32 elsewhere."""
    if setting != "auto":
        return setting  # type: ignore[return-value]
    return "amp_bf16" if device == "gpu" or bf16_units else "fp32"


def describe_precision(precision: str, device: Literal["cpu", "gpu"], bf16_units: str | None) -> str:
    """One line for the run's start, so a user sees which precision 'auto' chose and why."""
    if precision == "fp32":
        why = " (this CPU has no bf16 units: no amx_bf16 or avx512_bf16 flag)" if device == "cpu" and not bf16_units \
            else ""
        return f"precision: fp32{why}"
    where = "Composer's autocast" if device == "gpu" else f"bf16 autocast on CPU ({bf16_units or 'no bf16 units'})"
    return f"precision: amp_bf16, {where}; weights and optimizer state in float32"


def autocast(precision: str, device_type: str):
    """The context a forward pass runs in: bf16 autocast for ``amp_bf16`` on ``device_type``, else nothing."""
    if precision != "amp_bf16":
        return contextlib.nullcontext()
    import torch  # noqa: PLC0415 (this module is read by torch-free code too)

    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
