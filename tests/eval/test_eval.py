"""Evaluation: the held-out split made at prep time, eval during training, and `bertforge eval mlm`."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import (
    kill_when_saved,
    read_docs,
    release_shared_memory,
    run_config,
    train_ranks,
    tree_bytes,
    write_probe_tasks,
)

from bertforge.data.prep import held_out, prepare
from bertforge.data.recipe import load_recipe
from bertforge.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_shared_memory(tmp_path_factory):
    release_shared_memory(tmp_path_factory.getbasetemp())
    yield


def test_holdout_split_is_disjoint_and_deterministic_whatever_the_workers(tmp_path, sample_data):
    from helpers import small_sample_recipe

    trees = []
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        run.mkdir()
        recipe = load_recipe(small_sample_recipe(run, Path(sample_data["tokenizer"]), files=30),
                             [f"workers={workers}", "files_per_unit=7", "holdout.fraction=0.2",
                              f"out_dir={run / 'mds'}"])
        stats = prepare(recipe, progress=False)
        trees.append(tree_bytes(run / "mds"))
    assert trees[0] == trees[1]  # byte for byte, the split included
    held_total = kept_total = 0
    for name, source in stats.items():
        held = json.loads((tmp_path / "w2/mds" / name / "eval/stats.json").read_text())
        assert held["split"] == "eval" and held["provenance"] == source["provenance"]
        assert source["holdout"]["documents"] == held["documents"] > 0
        held_total, kept_total = held_total + held["documents"], kept_total + source["documents"]
        train_docs = {doc.tobytes() for doc in read_docs(tmp_path / "w2/mds" / name)}
        eval_docs = {doc.tobytes() for doc in read_docs(tmp_path / "w2/mds" / name / "eval")}
        assert len(eval_docs) > 0 and not train_docs & eval_docs
    assert 0.12 < held_total / (held_total + kept_total) < 0.28


def test_holdout_cap_keeps_whole_units_and_changing_the_share_refuses_old_units(tmp_path, sample_data):
    recipe = {"tokenizer": sample_data["tokenizer"], "out_dir": str(tmp_path / "out"), "max_seq_len": 64,
              "workers": 1, "holdout": {"fraction": 0.3},
              "sources": [{"name": "web", "inputs": [{"format": "pydoc_topics"}],
                           "holdout": {"fraction": 0.25, "max_tokens": 1}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    stats = prepare(load_recipe(path), progress=False)["web"]
    assert stats["holdout"]["fraction"] == 0.25  # the source's own setting wins
    assert stats["holdout"]["tokens"] > 0  # the first unit is kept whole, past the cap of 1 token
    recipe["sources"][0]["holdout"]["fraction"] = 0.1
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"holdout 0.25, the recipe now gives .* and holdout 0.1"):
        prepare(load_recipe(path), progress=False)


def test_held_out_is_decided_by_the_text_alone():
    texts = [f"document {i}" for i in range(2000)]
    chosen = [held_out(t, 0.1) for t in texts]
    assert chosen == [held_out(t, 0.1) for t in texts] and 100 < sum(chosen) < 300
    assert not any(held_out(t, 0.0) for t in texts)


# -- evaluation during training and `bertforge eval mlm` ----------------------------------------------------------

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))
EVAL = {"interval": "4ba", "max_tokens": 3000}


@pytest.fixture(scope="module")
def held_data(tmp_path_factory, sample_data) -> dict:
    """The sample slice prepared again with a 10% held-out split."""
    from helpers import small_sample_recipe

    out = tmp_path_factory.mktemp("held")
    recipe = load_recipe(small_sample_recipe(out, Path(sample_data["tokenizer"]), files=40),
                         ["holdout.fraction=0.1", "max_seq_len=256"])
    prepare(recipe, progress=False)
    return {**sample_data, "mds": out / "mds"}


def _evals(folder: Path, event: str = "eval") -> dict[int, dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {row["batch"]: row for row in rows if row.get("event") == event}


def _train(config: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, "train", str(config), *extra], capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.command("eval mlm")
def test_eval_in_training_starts_at_chance_and_equals_bertforge_eval_mlm(tmp_path, held_data):
    # float32, as `eval mlm` evaluates: the two must agree to 1e-5 (a bf16 run evaluates in bf16, as it trains)
    config = run_config(tmp_path, held_data, "evaluated", eval=EVAL, export_dir=str(tmp_path / "hf"), precision="fp32")
    result = _train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[eval at batch 0]" in result.stdout
    evals = _evals(tmp_path / "evaluated")
    assert sorted(evals) == [0, 4, 8, 12]
    assert abs(evals[0]["loss"] - math.log(8192)) < 0.3  # a fresh model: chance over the model's vocabulary
    assert evals[12]["loss"] < evals[0]["loss"] - 0.5
    assert set(evals[12]["streams"]) == {"code", "web", "science"}
    assert evals[12]["perplexity"] == pytest.approx(math.exp(evals[12]["loss"]))
    data = ",".join(str(held_data["mds"] / name / "eval") for name in ("code", "web", "science"))
    cli = subprocess.run([BERTFORGE, "eval", "mlm", str(tmp_path / "hf"), "--data", data, "--max-tokens", "3000",
                          "--seq-len", "256", "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 0, cli.stderr[-3000:]
    standalone = json.loads(cli.stdout)
    assert standalone["loss"] == pytest.approx(evals[12]["loss"], abs=1e-5)
    assert standalone["accuracy"] == pytest.approx(evals[12]["accuracy"], abs=1e-6)
    for name, row in standalone["streams"].items():
        assert row["loss"] == pytest.approx(evals[12]["streams"][name]["loss"], abs=1e-5)


@pytest.mark.slow
def test_eval_numbers_are_equal_on_one_and_two_ranks_ddp_and_fsdp2(tmp_path, held_data):

    first = {}
    for mode, ranks in (("single", 1), ("ddp", 2), ("fsdp2", 2)):
        config = run_config(tmp_path, held_data, mode, parallelism="ddp" if mode == "single" else mode,
                             max_duration="4096tok", optimizer={"name": "adamw", "lr": 2e-3}, eval=EVAL,
                             precision="fp32")
        result = train_ranks(config, ranks, "data.pack_across_ranks=true", f"data.micro_batch_size={2 // ranks}",
                              launcher="torchrun" if mode == "ddp" else "composer")
        assert result.returncode == 0, result.stderr[-3000:]
        first[mode] = _evals(tmp_path / mode)[0]
    for mode in ("ddp", "fsdp2"):
        assert first[mode]["predictions"] == first["single"]["predictions"]
        assert first[mode]["loss"] == pytest.approx(first["single"]["loss"], abs=1e-5)
        assert first[mode]["accuracy"] == pytest.approx(first["single"]["accuracy"], abs=1e-6)
        for name, row in first["single"]["streams"].items():
            assert first[mode]["streams"][name]["loss"] == pytest.approx(row["loss"], abs=1e-5)


def test_eval_and_probe_results_are_the_same_after_a_kill_and_autoresume(tmp_path, held_data):
    # The probe (eval.probe) at the same steps: a classification task fitted on the frozen encoder and a
    # zero-shot retrieval task, in metrics.jsonl, on the console and in curves.png.
    probe = {"tasks": [str(path) for path in write_probe_tasks(tmp_path / "tasks", rows=20)], "max_rows": 16}
    reference = run_config(tmp_path, held_data, "ref", eval=EVAL | {"probe": probe})
    result = _train(reference)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[probe at batch 0] tokens 0: probe-kind accuracy " in result.stdout
    expected, probes = _evals(tmp_path / "ref"), _evals(tmp_path / "ref", "probe")
    assert sorted(probes) == sorted(expected) == [0, 4, 8, 12]
    for row in probes.values():
        assert {name: task["metric"] for name, task in row["tasks"].items()} == {"probe-kind": "accuracy",
                                                                                 "probe-echo": "ndcg@10"}
        assert all(0 <= task["score"] <= 1 and task["seconds"] > 0 for task in row["tasks"].values())
    assert probes[0]["tasks"]["probe-echo"]["score"] == pytest.approx(1.0)  # exact copies, ranked first
    killed = run_config(tmp_path, held_data, "killed", eval=EVAL | {"probe": probe})
    folder = tmp_path / "killed"
    kill_when_saved(killed, folder)
    assert not (folder / "ep0-ba12-rank0.pt").exists(), "the run finished before it could be killed"
    result = _train(killed)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed, resumed_probes = _evals(folder), _evals(folder, "probe")
    assert sorted(resumed) == sorted(expected) and sorted(resumed_probes) == sorted(probes)
    for batch, row in expected.items():
        assert resumed[batch]["loss"] == pytest.approx(row["loss"], abs=1e-6), batch
        for name, task in probes[batch]["tasks"].items():
            assert resumed_probes[batch]["tasks"][name]["score"] == pytest.approx(task["score"], abs=1e-6), batch


def test_an_eval_stream_without_data_fails_before_training_naming_the_path(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "noeval", eval=EVAL)  # the sample slice has no held-out split
    result = _train(config)
    assert result.returncode == 2
    assert f"eval stream 'code': {sample_data['mds'] / 'code' / 'eval'} holds no prepared dataset" in result.stderr
    assert not (tmp_path / "noeval" / "metrics.jsonl").exists()
