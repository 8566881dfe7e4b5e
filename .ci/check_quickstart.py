"""CI's check of the README's main command, run in the clone's root right after `.venv/bin/bertforge quickstart`:
its export loads in transformers, its held-out loss fell by at least 2 nats, and a second quickstart keeps the
tokenizer and the shards, trains nothing and exits 0. Exits non-zero, naming what failed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForMaskedLM

MIN_DROP = 2.0  # nats of held-out MLM loss, first eval to last


def main() -> int:
    model = AutoModelForMaskedLM.from_pretrained("runs/quickstart/hf")
    print(f"runs/quickstart/hf loads in AutoModelForMaskedLM ({model.num_parameters():,} parameters)")
    evals = [row for row in map(json.loads, Path("runs/quickstart/metrics.jsonl").read_text().splitlines())
             if row.get("event") == "eval"]
    drop = evals[0]["loss"] - evals[-1]["loss"]
    print(f"held-out loss {evals[0]['loss']:.3f} -> {evals[-1]['loss']:.3f} ({drop:.3f} nats, {len(evals)} evals)")
    if drop < MIN_DROP:
        print(f"FAIL: the held-out loss fell by {drop:.3f} nats, less than {MIN_DROP}")
        return 1
    kept = {p: p.stat().st_mtime_ns for p in Path("data/sample").rglob("*")
            if p.is_file() and (".mds" in p.name or p.name == "unit.json" or p.parent.name == "tokenizer")}
    again = subprocess.run([".venv/bin/bertforge", "quickstart"], capture_output=True, text=True)
    print(again.stdout[-2000:], again.stderr[-2000:], sep="\n")
    if again.returncode != 0:
        print(f"FAIL: the second quickstart exited {again.returncode}")
        return 1
    rewritten = [str(p) for p, mtime in kept.items() if p.stat().st_mtime_ns != mtime]
    if rewritten or "exists, kept" not in again.stdout or "already finished" not in again.stdout:
        print(f"FAIL: the second quickstart did not skip what was done (rewrote {rewritten[:5]})")
        return 1
    print(f"second quickstart: exit 0, tokenizer and {len(kept)} shard and unit files kept, nothing trained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
