"""`bertforge env`: what a bug report needs, read from this very installation."""

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from bertforge.train.precision import cpu_bf16_units

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


@pytest.mark.command("env")
def test_env_reports_this_installation_as_text_and_as_json():
    result = subprocess.run([BERTFORGE, "env", "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for name in ("torch", "mosaicml", "mosaicml-streaming", "transformers"):
        assert report["packages"][name] == metadata.version(name)
    assert report["python"] == sys.version.split()[0]
    assert report["cpu"]["bf16_units"] == cpu_bf16_units() and report["cpu"]["cores"] >= 1
    import torch

    assert report["accelerator"]["cuda_available"] == torch.cuda.is_available()
    assert len(report["accelerator"]["gpus"]) == torch.cuda.device_count()
    sbatch = shutil.which("sbatch")
    # A version where sbatch runs; where it cannot (no slurm.conf), its path and why.
    assert (report["slurm"] or "").startswith(("slurm", sbatch)) if sbatch else report["slurm"] is None
    text = subprocess.run([BERTFORGE, "env"], capture_output=True, text=True, timeout=300, check=False)
    assert text.returncode == 0, text.stderr[-2000:]
    assert f"  torch {metadata.version('torch')}\n" in text.stdout
    assert f"  mosaicml {metadata.version('mosaicml')}\n" in text.stdout
    assert ("flash-attn not installed" in text.stdout) == (report["packages"]["flash-attn"] is None)
    assert text.stdout.startswith(f"bertforge {report['bertforge']['version']}")
