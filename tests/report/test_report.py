"""`bertforge report` on the fine-tuning tests' pretraining run: a fresh model and each checkpoint scored, the
table's numbers reproduced from the per-seed results, a corrupt checkpoint named while the rest is scored, and a
report killed mid-way resumed without redoing what it had finished."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bertforge.report.points import tokens_at

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def test_tokens_of_a_checkpoint_come_from_its_metrics_record_or_between_two():
    records = [{"batch": 2, "tokens": 2048}, {"event": "eval", "batch": 2, "tokens": 2048},
               {"batch": 4, "tokens": 4096}]
    assert tokens_at(records, 4) == 4096
    assert tokens_at(records, 3) == 3072
    assert tokens_at(records, 9) is None and tokens_at([], 1) is None


def test_every_picks_the_first_checkpoint_past_each_multiple_from_the_first_on(tmp_path):
    from bertforge.checkpoint.run_folder import RunFolder
    from bertforge.report.points import report_points

    batches = [6, 367, 733, 1100, 1466, 1833]  # a stop at batch 6, then a checkpoint every 3M tokens
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"batch": b, "tokens": b * 8192}) + "\n"
                                                    for b in batches))
    for batch in batches:
        (tmp_path / f"ep0-ba{batch}-rank0.pt").write_bytes(b"")
    points = report_points(RunFolder(tmp_path), every=6_000_000)
    # The fresh model is the point at 0; the stop at batch 6 and the 3M checkpoint are before the first multiple.
    assert [p.tokens for p in points] == [0, 733 * 8192, 1466 * 8192]
    assert len(report_points(RunFolder(tmp_path))) == len(batches) + 1


def _report(run: Path, out: Path, source_task: Path, **kwargs):
    command = [BERTFORGE, "report", str(run), "--tasks", str(source_task), "--seeds", "2", "train.epochs=1",
               "data.max_train_examples=64", "wandb.enabled=false", "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


@pytest.mark.slow
@pytest.mark.command("report")
def test_report_scores_every_checkpoint_against_a_fresh_model_and_resumes(tmp_path, pretrained, source_task):
    run = tmp_path / "run"
    shutil.copytree(pretrained / "pre", run, ignore=shutil.ignore_patterns("downstream", "export"))
    final = run / "ep0-ba24-rank0.pt"
    # A damaged checkpoint beside the good one: ba12's bytes differ from what its manifest says.
    corrupt = run / "ep0-ba12-rank0.pt"
    corrupt.write_bytes(final.read_bytes()[:-100] + b"\0" * 100)
    shutil.copy(run / "ep0-ba24-rank0.pt.manifest.json", run / "ep0-ba12-rank0.pt.manifest.json")
    out = tmp_path / "report"

    # Killed once the first fine-tuning has finished: what it finished stays, the rest is done on the rerun.
    first = _report(run, out, source_task)
    done = out / "points" / "fresh" / "tasks" / "sample-source" / "seed17" / "result.json"
    deadline = time.monotonic() + 600
    while not done.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert done.is_file(), first.communicate()[1][-3000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    kept = done.stat().st_mtime_ns
    again = _report(run, out, source_task)
    stdout, stderr = again.communicate(timeout=900)
    assert again.returncode == 0, stderr[-3000:]
    assert done.stat().st_mtime_ns == kept and "sample-source seed 17: done already" in stdout

    report = json.loads((out / "report.json").read_text())
    points = {row["name"]: row for row in report["points"]}
    assert list(points) == ["fresh", "step0000012-tokens12288", "step0000024-tokens24576"]
    assert "does not match its checksum" in points["step0000012-tokens12288"]["problem"]
    assert f"passing over step0000012-tokens12288: {corrupt}" in stdout
    # Every figure of the table is the per-seed results' own.
    for name in ("fresh", "step0000024-tokens24576"):
        seeds = [100 * json.loads((out / "points" / name / "tasks/sample-source" / f"seed{s}/result.json")
                                  .read_text())["scores"]["validation"]["accuracy"] for s in (17, 18)]
        summary = points[name]["summary"]["sample-source"]
        assert summary["mean"] == pytest.approx(statistics.mean(seeds)) and points[name]["scores"][
            "sample-source"] == pytest.approx(seeds)
        assert f"{summary['mean']:.1f} ± {summary['std']:.1f}" in (out / "report.md").read_text()
    fresh, trained = (points[n]["summary"]["sample-source"] for n in ("fresh", "step0000024-tokens24576"))
    assert trained["beats_fresh"] == (trained["mean"] - fresh["mean"] > max(
        trained["max"] - trained["min"], fresh["max"] - fresh["min"]))
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "points" / "fresh" / "model").exists()  # each point's export removed once it is scored
