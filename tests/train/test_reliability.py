"""The third reliability pass: values that reach a script or a file name, restarts that would change a run,
exports that could mix or mismatch, data that says one thing and holds another, and the failures a user meets,
each answered by one line (exit 2, no traceback) or refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import assert_export_matches, read_metrics, run_config, train_ranks

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def bertforge(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """The command failed with exit 2 and a single `bertforge: error:` line holding each expected text."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("bertforge: error: "), result.stderr[-2000:]
    for text in expected:
        assert text in line, line
    return line


# -- values rendered into scripts or used as names ---------------------------------------------------------------

@pytest.mark.parametrize("option", ["--time", "--partition", "--account"])
def test_a_newline_in_an_sbatch_value_is_refused_and_nothing_is_written(tmp_path, sample_data, option):
    config = run_config(tmp_path, sample_data, "inject")
    result = bertforge("slurm", str(config), "--nodes", "1", option, "1:00\ntouch PWNED")
    one_line_error(result, option, "an #SBATCH value may hold only")
    assert not (tmp_path / "inject" / "slurm").exists()
    prep = bertforge("prep", str(sample_data["recipe"]), "--slurm", "--nodes", "1", option,
                     "x\n#SBATCH --wrap=touch PWNED")
    one_line_error(prep, option)


@pytest.mark.parametrize("name", ["../../../x", "a/b", ".."])
def test_a_run_name_must_be_one_folder_name(tmp_path, sample_data, name):
    config = run_config(tmp_path, sample_data, "named")
    result = bertforge("slurm", str(config), "--nodes", "1", "--", f"run_name={name}", cwd=tmp_path)
    one_line_error(result, "'run_name' must be one folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["named.yaml"]


# -- restarts that would change the run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, sample_data) -> Path:
    """A finished 12-step run whose checkpoint interval is longer than the run: its final checkpoint is written
    all the same."""
    tmp = tmp_path_factory.mktemp("finished")
    config = run_config(tmp, sample_data, "done", max_duration="8192tok", checkpoint={"interval": "1000ba",
                                                                                       "keep": -1})
    result = bertforge("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp / "done").glob("ep*")) == ["ep0-ba8-rank0.pt", "ep0-ba8-rank0.pt.manifest.json"]
    return config


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    """The run (config.yaml, streams.json, checkpoints) copied into a new folder, with a config pointing at it."""
    shutil.copytree(finished.parent / "done", tmp_path / "done")
    config = yaml.safe_load(finished.read_text())
    config["save_folder"] = str(tmp_path / "done")
    path = tmp_path / "done.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("override", "named"), [
    ("data.streams.code.proportion=0.8", "data.streams.code.proportion: 0.5 -> 0.8"),
    ("global_batch_size=8", "global_batch_size: 4 -> 8"),
    ("model.num_hidden_layers=2", "model.num_hidden_layers: 4 -> 2"),
    ("data.mask_rate=0.15", "data.mask_rate: 0.3 -> 0.15"),
])
def test_a_restart_that_changes_the_run_is_refused_naming_the_change(tmp_path, finished, override, named):
    config = _copy_run(finished, tmp_path)
    before = (tmp_path / "done/config.yaml").read_bytes()
    result = bertforge("train", str(config), "max_duration=16384tok", override)
    line = one_line_error(result, named, "restart with the recorded values", "start a new phase")
    assert "max_duration" not in line.split("changes what its checkpoint continues")[1].split(". Either")[0]
    assert (tmp_path / "done/config.yaml").read_bytes() == before
    assert not list((tmp_path / "done").glob("ep0-ba1[0-9]*"))


def test_a_restart_without_config_yaml_is_refused_not_resumed_unchecked(tmp_path, finished):
    config = _copy_run(finished, tmp_path)
    (tmp_path / "done/config.yaml").unlink()
    one_line_error(bertforge("train", str(config), "max_duration=16384tok", "global_batch_size=8"),
                   "holds checkpoints but no config.yaml", "start a new phase from ep0-ba8-rank0.pt")
    assert not list((tmp_path / "done").glob("ep0-ba1[0-9]*"))


def test_a_restart_on_another_dataset_is_refused(tmp_path, finished, sample_data):
    config = _copy_run(finished, tmp_path)
    other = f"data.streams.code.local={sample_data['mds'] / 'web'}"
    one_line_error(bertforge("train", str(config), "max_duration=16384tok", other), "data.streams.code (dataset",
                   "-> 'index ")
    # The same dataset moved elsewhere is the same run.
    moved = tmp_path / "code-moved"
    shutil.copytree(sample_data["mds"] / "code", moved)
    result = bertforge("train", str(config), f"data.streams.code.local={moved}", "max_duration=12288tok")
    assert result.returncode == 0, result.stderr[-3000:]


def test_safe_changes_are_allowed_and_recorded_without_rewriting_config_yaml(tmp_path, finished):
    config = _copy_run(finished, tmp_path)
    folder = tmp_path / "done"
    before = (folder / "config.yaml").read_bytes()
    result = bertforge("train", str(config), "max_duration=12288tok", "optimizer.lr=0.001", "log_interval=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert max(read_metrics(folder)) == 12
    assert (folder / "config.yaml").read_bytes() == before
    changes = [json.loads(line) for line in (folder / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"checkpoint": "ep0-ba8-rank0.pt", "changed": {
        "log_interval": [1, 2], "max_duration": ["8192tok", "12288tok"], "optimizer.lr": [0.002, 0.001],
        "save_folder": [str(finished.parent / "done"), str(folder)]}}]
    from bertforge.checkpoint.run_folder import read_checkpoint_state

    state = read_checkpoint_state(folder / "ep0-ba12-rank0.pt")
    run_state = next(v for k, v in state["callbacks"].items() if k.startswith("RunState"))
    assert run_state["lineage"]["config_changes"] == changes
    # A max_duration the run has passed already: nothing to train, and said so.
    shorter = bertforge("train", str(config), "max_duration=10240tok")
    assert shorter.returncode == 0 and "already finished at 12,288 tokens" in shorter.stdout, shorter.stderr[-2000:]


def test_a_rerun_of_a_finished_run_says_so_and_exits_0(tmp_path, finished):
    config = _copy_run(finished, tmp_path)
    result = bertforge("train", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: already finished at 8,192 tokens (max_duration 8192tok); nothing to train" in result.stdout
    assert "raise max_duration" in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize(("override", "named"), [
    ("checkpoint.interval=0ba", "'checkpoint.interval' must be above zero"),
    ("max_duration=0tok", "'max_duration' must be above zero"),
    ("eval.interval=0ba", "'eval.interval' must be above zero, got '0ba'; to switch evaluation off"),
])
def test_zero_lengths_and_intervals_are_refused(tmp_path, sample_data, override, named):
    config = run_config(tmp_path, sample_data, "zero")
    one_line_error(bertforge("train", str(config), override), named)


def test_eval_switches_off_from_the_command_line(sample_data, tmp_path):
    from bertforge.train.config import load_train_config

    config = load_train_config(run_config(tmp_path, sample_data, "e", eval={"interval": "2ba"}), ["eval.interval="])
    assert not config.eval.interval


# -- exports ---------------------------------------------------------------------------------------------------------

def test_export_refuses_a_tokenizer_that_does_not_fit_and_replaces_its_folder_whole(tmp_path, finished,
                                                                                      sample_data):
    from transformers import AutoModelForMaskedLM

    from bertforge.data.tokenizer import train_tokenizer

    one_line_error(bertforge("model", "init", "tiny", str(tmp_path / "small"), "vocab_size=1024", "--tokenizer",
                             sample_data["tokenizer"]), "2,048 tokens, more than the model's vocabulary (1,024)")
    assert not (tmp_path / "small").exists()
    checkpoint = str(finished.parent / "done/ep0-ba8-rank0.pt")
    other = train_tokenizer((f"token{i} other{i % 7}" for i in range(4000)), 2048, tmp_path / "other")
    one_line_error(bertforge("export", checkpoint, str(tmp_path / "a"), "--tokenizer", str(other)),
                   "was trained with tokenizer", "maps text to other ids")
    assert not (tmp_path / "a").exists()
    # An earlier export is replaced whole: none of its files survive beside the new ones.
    out = tmp_path / "hf"
    assert bertforge("export", checkpoint, str(out)).returncode == 0
    (out / "model.safetensors").write_bytes(b"stale")
    result = bertforge("export", checkpoint, str(out), "--tokenizer", sample_data["tokenizer"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert AutoModelForMaskedLM.from_pretrained(out).config.vocab_size == 8192
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_export_of_a_cut_off_or_foreign_checkpoint_is_one_line(tmp_path, finished):
    cut = tmp_path / "ep0-ba8-rank0.pt"
    data = (finished.parent / "done/ep0-ba8-rank0.pt").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    shutil.copy(finished.parent / "done/ep0-ba8-rank0.pt.manifest.json", tmp_path)
    one_line_error(bertforge("export", str(cut), str(tmp_path / "o")), "truncated or rewritten")
    (tmp_path / "ep0-ba8-rank0.pt.manifest.json").unlink()
    one_line_error(bertforge("export", str(cut), str(tmp_path / "o")), "cannot be read as a checkpoint")
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"\x80\x02}q\x00.")  # a bare (non-zip) pickle, as torch wrote before 1.6
    one_line_error(bertforge("export", str(legacy), str(tmp_path / "o")), str(legacy))


def test_fsdp2_run_exports_the_gathered_model(tmp_path, sample_data):
    """With FSDP2 every rank holds a shard; the export gathers them (it crashed before) and equals the final
    sharded checkpoint's model."""
    config = run_config(tmp_path, sample_data, "f", export_dir=str(tmp_path / "hf"), parallelism="fsdp2",
                        optimizer={"name": "adamw", "lr": 1e-3}, max_duration="4096tok")
    result = train_ranks(config, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_export_matches(tmp_path / "hf", tmp_path / "f" / "ep0-ba4")


# -- data that says one thing and holds another --------------------------------------------------------------------

def _copied_stream(sample_data, tmp_path: Path, name: str = "code") -> Path:
    copy = tmp_path / name
    shutil.copytree(sample_data["mds"] / name, copy)
    return copy


def test_an_edited_index_is_caught_by_the_preflight(tmp_path, sample_data):
    source = _copied_stream(sample_data, tmp_path)
    index = json.loads((source / "index.json").read_text())
    total = sum(s["samples"] for s in index["shards"])
    index["shards"][0]["samples"] -= 1
    (source / "index.json").write_text(json.dumps(index))
    config = run_config(tmp_path, sample_data, "edited")
    one_line_error(bertforge("train", str(config), f"data.streams.code.local={source}"),
                   f"lists {total - 1:,} samples", f"records {total:,}")


def test_a_stream_without_samples_is_one_line(tmp_path, sample_data):
    source = _copied_stream(sample_data, tmp_path)
    index = json.loads((source / "index.json").read_text())
    for shard in index["shards"]:
        (source / shard["zip_data"]["basename"]).unlink()
    index["shards"] = []
    (source / "index.json").write_text(json.dumps(index))
    stats = json.loads((source / "stats.json").read_text())
    (source / "stats.json").write_text(json.dumps(stats | {"samples": 0}))
    config = run_config(tmp_path, sample_data, "empty")
    one_line_error(bertforge("train", str(config), f"data.streams.code.local={source}"), "holds no samples")


@pytest.mark.parametrize(("rows", "named"), [
    ([{"text": "fine", "label": "a"}, {"label": "b"}], "row 1: no text in field 'text'"),
    ([{"text": None, "label": "a"}], "row 0: no text in field 'text'"),
])
def test_fine_tuning_rows_without_text_are_refused_naming_file_split_and_row(tmp_path, sample_data, rows, named):
    task = _task(tmp_path, rows)
    one_line_error(bertforge("finetune", str(task), str(tmp_path / "model"), "--tokenizer", sample_data["tokenizer"]),
                   named, "split 'train'", str(tmp_path / "train.jsonl"))


def _task(tmp_path: Path, rows: list[dict], problem_type: str | None = None) -> Path:
    bertforge("model", "init", "tiny", str(tmp_path / "model"), "vocab_size=2048")
    data = "".join(json.dumps(row) + "\n" for row in rows)
    (tmp_path / "train.jsonl").write_text(data)
    (tmp_path / "dev.jsonl").write_text(data)
    head = {"labels": ["a", "b"]} if problem_type is None else {"labels": ["score"], "problem_type": problem_type}
    task = tmp_path / "task.yaml"
    metrics = {} if problem_type is None else {"metrics": ["pearson"], "main_metric": "pearson"}
    task.write_text(yaml.safe_dump({"name": "t", "data": {"files": {"train": "train.jsonl", "validation": "dev.jsonl"},
                                                          "text_fields": ["text"]}, "head": head, **metrics}))
    return task


def test_an_empty_train_file_and_string_labels_for_regression_are_one_line(tmp_path, sample_data):
    task = _task(tmp_path, [{"text": "x", "label": "high"}], problem_type="regression")
    command = ["finetune", str(task), str(tmp_path / "model"), "--tokenizer", sample_data["tokenizer"]]
    one_line_error(bertforge(*command), "label 'high' is not a number")
    (tmp_path / "train.jsonl").write_text("")
    one_line_error(bertforge(*command), "train.jsonl, which is empty")


# -- paths, files and services -------------------------------------------------------------------------------------

def test_unwritable_places_are_one_line(tmp_path, sample_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_error(bertforge("prep", str(sample_data["recipe"]), f"out_dir={blocker}/mds"), str(blocker))
    if os.geteuid() != 0:  # root writes anywhere; the permission case is for users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_error(bertforge("prep", str(sample_data["recipe"]), f"out_dir={locked}/mds"), "ermission denied")


def test_a_corrupt_config_json_is_named(tmp_path, sample_data):
    bertforge("model", "init", "tiny", str(tmp_path / "m"), "vocab_size=2048")
    (tmp_path / "m/config.json").write_text("{not json")
    one_line_error(bertforge("eval", "mlm", str(tmp_path / "m"), "--data", str(sample_data["mds"] / "code")),
                   f"{tmp_path / 'm/config.json'}: not valid JSON")


def test_export_from_an_unreachable_object_store_is_one_line(tmp_path, monkeypatch):
    env = os.environ | {"S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                        "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}
    result = subprocess.run([BERTFORGE, "export", "s3://nowhere/run/ep0-ba8-rank0.pt", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300, env=env)
    one_line_error(result, "the object store could not be used", "127.0.0.1:9")


def test_a_full_disk_during_a_checkpoint_save_names_the_folder(tmp_path, sample_data):
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root, which this test needs to mount a small tmpfs")
        pytest.skip("mounting a small tmpfs (a disk that fills) needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)], check=True)
    try:
        config = run_config(tmp_path, sample_data, "full", save_folder=str(small / "run"))
        line = one_line_error(bertforge("train", str(config)), f"no space left on {small / 'run'}")
        assert "set aside when the run restarts" in line
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_an_average_into_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """Fault case 19: safetensors' own error; the export path maps it to the disk-full line (export and average
    write through the same function)."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root, which this test needs to mount a small tmpfs")
        pytest.skip("mounting a small tmpfs (a disk that fills) needs root")
    bertforge("model", "init", "tiny", str(tmp_path / "m"), "vocab_size=2048")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(small)], check=True)
    try:
        one_line_error(bertforge("average", str(tmp_path / "m"), str(tmp_path / "m"), str(small / "avg")),
                       f"no space left on {small}")
        assert list(small.iterdir()) == []  # the staging folder is removed, no half export left
    finally:
        subprocess.run(["umount", str(small)], check=True)
