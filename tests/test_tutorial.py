"""docs/tutorial.md runs as written: its shell blocks in order as one script, then its Python block, in a project
folder holding what the tutorial asks the reader to bring (a folder of text, a labelled task, a BEIR folder)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

TUTORIAL = ROOT / "docs" / "tutorial.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", TUTORIAL.read_text(), re.M | re.S)


def _bring_your_own(project: Path) -> None:
    """What a reader has before step 1: paragraphs of Python's own documentation as their text, and a labelled
    task and a search task made from them."""
    from pydoc_data.topics import topics

    paragraphs = [" ".join(p.split()) for text in topics.values() for p in text.split("\n\n") if len(p.split()) > 12]
    (project / "my-text").mkdir(parents=True)
    for i, paragraph in enumerate(paragraphs[:400]):
        (project / "my-text" / f"doc{i:03d}.txt").write_text(paragraph + "\n")
    sentences = [s.strip() for p in paragraphs[400:700] for s in p.split(". ") if len(s.split()) > 5]
    rows = [{"text": f"{s.rstrip('.')}?" if i % 2 else s, "label": "question" if i % 2 else "statement"}
            for i, s in enumerate(sentences[:240])]
    (project / "my-task").mkdir()
    for split, part in (("train", rows[:160]), ("validation", rows[160:])):
        (project / "my-task" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    beir = project / "my-search"
    (beir / "qrels").mkdir(parents=True)
    docs = paragraphs[:120]
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": d}) + "\n"
                                               for i, d in enumerate(docs)))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": " ".join(d.split()[:8])}) + "\n"
                                                for i, d in enumerate(docs)))
    for split, ids in (("train", range(0, 80)), ("test", range(80, 120))):
        (beir / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                      + "".join(f"q{i}\td{i}\t1\n" for i in ids))


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path):
    project = tmp_path / "my-project"
    _bring_your_own(project)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    script = "set -euo pipefail\n" + "\n".join(_blocks("bash"))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"WANDB_MODE": "offline"}
    shell = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert shell.returncode == 0, shell.stdout[-3000:] + shell.stderr[-3000:]
    evals = [json.loads(line) for line in (project / "runs/mine/metrics.jsonl").read_text().splitlines()
             if '"event": "eval"' in line]
    assert len(evals) >= 2 and evals[-1]["loss"] < evals[0]["loss"]
    for task in ("my-task", "my-search"):
        assert (project / "finetuned" / task / "seed17" / "result.json").is_file(), task
    (python,) = _blocks("python")
    used = subprocess.run([sys.executable, "-c", python], cwd=project, capture_output=True, text=True, timeout=600)
    assert used.returncode == 0, used.stderr[-3000:]
    printed = [line for line in used.stdout.splitlines() if "WANDB" not in line]  # the libraries' own notice
    shape, label, similarity = printed[:3]
    assert shape.startswith("torch.Size([1,") and label in ("question", "statement") and "tensor([[" in similarity
