"""Exports and averages never destroy a user's files (the fourth reliability pass): a folder holding anything but an
earlier bertforge export is refused untouched, OUT may not be a source, a run folder exports its newest complete
checkpoint, and a checkpoint's recorded tokenizer is found from any working folder and checked by fingerprint."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tree_bytes
from transformers import AutoModel, AutoTokenizer

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def bertforge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def refused(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("bertforge: error: ") and all(text in line for text in expected), line


def _user_folders(root: Path) -> dict[str, Path]:
    """A user's notes beside a model, a model downloaded from elsewhere, and an earlier export with notes added."""
    notes = root / "notes"
    (notes / "data").mkdir(parents=True)
    (notes / "notes.txt").write_text("keep")
    (notes / "config.json").write_text("{}")
    (notes / "data/important.csv").write_text("a,b\n")
    hub = root / "hub-model"
    hub.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        (hub / name).write_text("{}")
    return {"notes": notes, "hub": hub}


@pytest.mark.slow
def test_export_and_average_refuse_folders_holding_other_files_and_touch_nothing(short_run, tmp_path):
    checkpoint = short_run / "run" / "ep0-ba12-rank0.pt"
    folders = _user_folders(tmp_path)
    before = {name: tree_bytes(path) for name, path in folders.items()}
    for name, folder in folders.items():
        refused(bertforge("export", checkpoint, folder), str(folder), "did not export", "nothing was changed")
        refused(bertforge("average", checkpoint, folder), str(folder), "did not export")
        assert tree_bytes(folder) == before[name]
    # An earlier export with a file of the user's added: refused too, naming that file.
    ours = tmp_path / "ours"
    assert bertforge("export", checkpoint, ours).returncode == 0
    (ours / "my-notes.md").write_text("keep")
    refused(bertforge("export", checkpoint, ours), "other files (my-notes.md)")
    assert (ours / "my-notes.md").read_text() == "keep"
    # OUT named as one of the sources: that model would be overwritten.
    model = tmp_path / "model"
    assert bertforge("export", checkpoint, model).returncode == 0
    saved = tree_bytes(model)
    refused(bertforge("average", model, checkpoint, model), f"the output folder {model} is the source {model}")
    assert tree_bytes(model) == saved


@pytest.mark.slow
def test_a_run_folder_exports_its_newest_checkpoint_with_the_recorded_tokenizer_from_anywhere(short_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = short_run / "run"
    result = bertforge("export", run, tmp_path / "out", cwd=elsewhere)  # no --tokenizer: the run records one
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"newest complete checkpoint, {run / 'ep0-ba12-rank0.pt'}" in result.stdout
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert AutoModel.from_pretrained(tmp_path / "out")(**tokenizer("def f(x):", return_tensors="pt")) is not None
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (short_run / "hf" / "tokenizer.json").read_bytes()
    # The flags may come anywhere: `export RUN --all OUT` as a user types it.
    result = bertforge("export", run, "--all", tmp_path / "all", cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "all").glob("step*/tokenizer.json"))) == 3


def test_a_recorded_relative_tokenizer_with_other_ids_is_refused_not_used(tmp_path, sample_data):
    from bertforge.checkpoint.read import recorded_tokenizer
    from bertforge.data.provenance import tokenizer_fingerprint
    from bertforge.data.tokenizer import train_tokenizer
    from bertforge.errors import CheckpointError

    run = tmp_path / "work" / "runs" / "r"
    run.mkdir(parents=True)
    shutil.copytree(sample_data["tokenizer"], tmp_path / "work" / "runs" / "tok")
    state = {"tokenizer": "tok", "tokenizer_fingerprint": tokenizer_fingerprint(sample_data["tokenizer"])}
    # An older run recorded 'tok' relative to its working folder (here the run folder's parent).
    assert recorded_tokenizer(state, run / "ep0-ba4-rank0.pt") == str(run.parent / "tok")
    # Another 'tok' with other ids in the current folder is refused, not used in its place.
    train_tokenizer((f"word{i} other{i % 5}" for i in range(3000)), 2048, tmp_path / "tok")
    other = tmp_path / "tok"
    state_here = dict(state, tokenizer=str(other))
    with pytest.raises(CheckpointError, match="is another tokenizer"):
        recorded_tokenizer(state_here, run / "ep0-ba4-rank0.pt")
    assert recorded_tokenizer({"tokenizer": str(tmp_path / "gone"), "tokenizer_fingerprint": "x"},
                              run / "ep0-ba4-rank0.pt") is None
