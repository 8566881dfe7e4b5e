"""The precision a run trains in (train/precision.py): 'auto' reads the CPU's bf16 units from /proc/cpuinfo, and
bf16 on a CPU is bertforge's own autocast around the forward pass (Composer refuses amp_bf16 on CPU)."""

import pytest
import torch

from bertforge.data.loader import MODEL_INPUTS
from bertforge.train.composer_model import MLMComposerModel
from bertforge.train.precision import autocast, cpu_bf16_units, describe_precision, resolve_precision


def _cpuinfo(tmp_path, *flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text("".join(f"processor\t: {n}\nmodel name\t: x\nflags\t\t: fpu sse2 avx2 avx512f {' '.join(flags)}\n\n"
                            for n in range(2)))
    return path


def test_bf16_units_are_read_from_the_cpu_flags(tmp_path):
    assert cpu_bf16_units(_cpuinfo(tmp_path, "avx512_bf16")) == "avx512_bf16"
    assert cpu_bf16_units(_cpuinfo(tmp_path, "avx512_bf16", "amx_tile", "amx_bf16")) == "amx_bf16"
    assert cpu_bf16_units(_cpuinfo(tmp_path)) is None  # AVX-512 without its BF16 extension: float32
    assert cpu_bf16_units(tmp_path / "absent") is None  # no /proc (macOS): float32


@pytest.mark.parametrize(("setting", "device", "units", "expected"), [
    ("auto", "gpu", None, "amp_bf16"), ("auto", "cpu", "amx_bf16", "amp_bf16"), ("auto", "cpu", None, "fp32"),
    ("fp32", "cpu", "amx_bf16", "fp32"), ("fp32", "gpu", None, "fp32"), ("amp_bf16", "cpu", None, "amp_bf16")])
def test_auto_is_bf16_on_gpus_and_on_cpus_with_bf16_units(setting, device, units, expected):
    assert resolve_precision(setting, device, units) == expected


def test_the_start_line_says_what_auto_chose_and_why():
    assert describe_precision("fp32", "cpu", None) == \
        "precision: fp32 (this CPU has no bf16 units: no amx_bf16 or avx512_bf16 flag)"
    assert "bf16 autocast on CPU (avx512_bf16)" in describe_precision("amp_bf16", "cpu", "avx512_bf16")


def test_the_cpu_bf16_model_casts_its_forward_pass_and_keeps_float32_weights():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast("amp_bf16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    with autocast("fp32", "cpu"):
        assert layer(x).dtype == torch.float32

    class Probe(torch.nn.Module):  # records the dtype its matmul ran in
        def forward(self, **inputs):
            self.seen = (inputs["input_ids"].float() @ torch.ones(4, 4)).dtype
            return self.seen

    for cpu_bf16, expected in ((True, torch.bfloat16), (False, torch.float32)):
        probe = Probe()
        model = MLMComposerModel(probe, cpu_bf16=cpu_bf16)
        model({key: torch.ones(1, 4) for key in MODEL_INPUTS})
        assert probe.seen == expected
