"""`bertforge train` against the independent trainer of tests/reference_trainer.py over a longer run than the CI
test (tests/train/test_reference_parity.py, 30 steps): prints the largest and median step-loss difference and the
largest final-weight difference, for one rank without and with gradient accumulation.

    python bench/reference_parity.py --steps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "train")]

import test_reference_parity as parity  # noqa: E402
from conftest import small_sample_recipe  # noqa: E402
from helpers import read_metrics, train_ranks  # noqa: E402
from transformers import AutoModelForMaskedLM  # noqa: E402

from bertforge.data.prep import prepare  # noqa: E402
from bertforge.data.recipe import load_recipe  # noqa: E402
from bertforge.data.sources import recipe_texts  # noqa: E402
from bertforge.data.tokenizer import train_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = load_recipe(small_sample_recipe(tmp, tmp / "tokenizer"))
        train_tokenizer(recipe_texts(recipe), 2048, tmp / "tokenizer")
        prepare(recipe, progress=False)
        sample = {"tokenizer": str(tmp / "tokenizer"), "mds": tmp / "mds"}
        for name, data in (("one rank", {"pack_across_ranks": True}), ("accumulation", {"micro_batch_size": 1})):
            run = name.replace(" ", "-")
            config, start = parity._setup(tmp, sample, run, steps=args.steps, **data)
            result = train_ranks(config, 1)
            if result.returncode:
                sys.exit(result.stderr[-3000:])
            losses, model = parity._reference(config, start)
            ours = read_metrics(tmp / run)
            diffs = [abs(ours[i + 1]["loss"] - loss) for i, loss in enumerate(losses)]
            exported = AutoModelForMaskedLM.from_pretrained(tmp / run / "hf").state_dict()
            weights = max((exported[k] - model.state_dict()[k]).abs().max().item() for k in exported)
            print(f"{name:14} {len(losses)} steps: loss {losses[0]:.3f} -> {losses[-1]:.3f}; step-loss difference "
                  f"max {max(diffs):.1e}, median {statistics.median(diffs):.1e}; final weights max {weights:.1e}")


if __name__ == "__main__":
    main()
