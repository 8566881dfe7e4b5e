#!/usr/bin/env bash
# The one-shot GPU benchmark (bench/gpu.py): needs only torch and transformers, and this checkout.
#   bash bench/gpu.sh [--out FILE] [--no-compile]     on a GPU
#   bash bench/gpu.sh --dry-run [--out FILE]          the same code on CPU at tiny sizes
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$here/../src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
exec "${PYTHON:-python3}" "$here/gpu.py" "$@"
