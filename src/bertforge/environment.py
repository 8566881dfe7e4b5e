"""`bertforge env`: the versions and hardware a bug report needs, in one place.

What decides whether a run works and how fast: the Python and the packages bertforge is pinned to (torch, Composer,
streaming, transformers), the optional ones (flash-attn, sentence-transformers, PyLate), the accelerator (CUDA,
cuDNN, NCCL, each GPU and its memory) or the CPU (its bf16 units pick the default precision), and Slurm. Nothing
here fails: what cannot be read is reported as such.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bertforge import __version__
from bertforge.train.precision import cpu_bf16_units

PACKAGES = ("torch", "mosaicml", "mosaicml-streaming", "transformers", "tokenizers", "torch-optimi", "flash-attn",
            "triton", "datasets", "huggingface-hub", "sentence-transformers", "pylate", "scikit-learn", "numpy",
            "wandb", "boto3", "omegaconf")
"""The distributions reported, by their names on PyPI."""


def collect() -> dict:
    """Everything `bertforge env` reports, as plain values (the ``--json`` output)."""
    return {"bertforge": {"version": __version__, "commit": _git_commit(), "location": str(Path(__file__).parent)},
            "python": sys.version.split()[0], "platform": platform.platform(), "cpu": _cpu(),
            "packages": {name: _version(name) for name in PACKAGES}, "accelerator": _accelerator(),
            "slurm": _command_version(["sbatch", "--version"]),
            "environment": {key: os.environ[key] for key in ("CUDA_VISIBLE_DEVICES", "WANDB_MODE", "HF_HOME")
                            if key in os.environ}}


def format_report(report: dict) -> str:
    """The report as lines to paste into an issue."""
    acc, cpu, own = report["accelerator"], report["cpu"], report["bertforge"]
    lines = [f"bertforge {own['version']}" + (f" (commit {own['commit']})" if own["commit"] else "")
             + f" at {own['location']}",
             f"Python {report['python']} on {report['platform']}",
             f"CPU: {cpu['model']}, {cpu['cores']} cores, {cpu['memory_gb']} GB memory, bf16 units: "
             f"{cpu['bf16_units'] or 'none'}"]
    if acc.get("error"):
        lines.append(f"accelerator: torch could not be imported ({acc['error']})")
    elif acc["cuda_available"]:
        lines.append(f"CUDA {acc['cuda']}, cuDNN {acc['cudnn']}, NCCL {acc['nccl']}, {len(acc['gpus'])} GPU(s):")
        lines += [f"  {i}: {gpu['name']}, {gpu['memory_gb']} GB, compute capability {gpu['capability']}"
                  for i, gpu in enumerate(acc["gpus"])]
    else:
        lines.append(f"no CUDA device (torch built for CUDA {acc['cuda'] or 'none'}): runs use the CPU")
    lines.append(f"Slurm: {report['slurm'] or 'not found (sbatch is not on PATH)'}")
    lines.append("packages:")
    lines += [f"  {name} {version or 'not installed'}" for name, version in report["packages"].items()]
    lines += [f"{key}={value}" for key, value in report["environment"].items()]
    return "\n".join(lines) + "\n"


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of a source checkout (an editable install); None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, timeout=30, check=False)
    return result.stdout.strip() or None


def _cpu() -> dict:
    model, memory = platform.processor() or platform.machine(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "memory_gb": memory, "bf16_units": cpu_bf16_units()}


def _accelerator() -> dict:
    try:
        import torch  # noqa: PLC0415 (seconds to import; only this report needs it)
    except Exception as err:  # noqa: BLE001 (a broken install is what a bug report needs to show)
        return {"error": f"{type(err).__name__}: {err}"}
    report = {"cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda, "cudnn": None, "nccl": None,
              "gpus": []}
    if report["cuda_available"]:
        report["cudnn"] = torch.backends.cudnn.version()
        report["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            report["gpus"].append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                                   "capability": f"{props.major}.{props.minor}"})
    return report


def _command_version(command: list[str]) -> str | None:
    """The first line ``command`` prints (``slurm 22.05.8``); where it fails (sbatch with no slurm.conf to read), where
    it is and its last error line; None where it is not on PATH."""
    path = shutil.which(command[0])
    if path is None:
        return None
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    lines = (result.stdout or result.stderr).strip().splitlines() or ["(no output)"]
    return lines[0] if result.returncode == 0 else f"{path}, but `{' '.join(command)}` failed: {lines[-1]}"
