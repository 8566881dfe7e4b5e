"""bench/gpu.sh --dry-run: the GPU benchmark's own code, on CPU at tiny sizes, with nothing but torch and
transformers imported from outside this checkout."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "bench/gpu.sh"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu"
    assert report["imported_but_not_needed"] == []  # no Composer, streaming, OmegaConf... on the GPU machine
    # The flex backend agrees with sdpa on the benchmark's own batch.
    float32 = [c for c in report["checks"] if c["backend"] == "flex" and c["dtype"] == "float32"]
    assert float32 and float32[0]["max_abs_diff"] < 1e-5
    sides = {(row["seq_len"], row["side"]) for row in report["model_step"]}
    for seq_len in report["plan"]["seq_lens"]:
        assert {(seq_len, "bertforge flex (packed)"), (seq_len, "bertforge sdpa (packed)"),
                (seq_len, "transformers sdpa (padded)")} <= sides
    for row in report["model_step"] + report["train_step"]:
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["median_step_s"] > 0
    for row in report["model_step"]:
        assert row["real_tokens"] == report["plan"]["step_tokens"][str(row["seq_len"])]
        assert row["padded_tokens"] >= row["real_tokens"]
        assert row["vs_transformers_sdpa"] > 0
    train = report["train_step"]
    assert {row["side"] for row in train} == {"bertforge flex eager", "bertforge sdpa eager"}
    plan = report["plan"]
    assert all(row["real_tokens"] == plan["train_rows"] * plan["train_seq_len"] for row in train)
