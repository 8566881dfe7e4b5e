"""The fourth reliability pass's fault cases that need no training run: each was a traceback or a silent change
before (docs/faults.md lists every case with its verdict)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from bertforge.checkpoint.run_folder import read_metric_records
from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.masking import mask_tokens
from bertforge.data.mixture import proportions_note, stream_shares
from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.data.tokenizer import tokenizer_size_and_specials
from bertforge.errors import ConfigError, DataError
from bertforge.finetune.beir import read_beir


def _streams(tmp_path, **tokens: int) -> dict[str, StreamConfig]:
    streams = {}
    for name, count in tokens.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "stats.json").write_text(json.dumps({"tokens": count, "samples": count // 100}))
        streams[name] = StreamConfig(local=str(tmp_path / name))
    return streams


def test_a_very_low_temperature_gives_the_largest_stream_everything_and_nan_is_refused(tmp_path):
    streams = _streams(tmp_path, big=10**9, small=10**6)
    shares = {s.name: s.token_share for s in stream_shares(DataConfig(tokenizer="t", streams=streams,
                                                                      temperature=0.01))}
    assert shares["big"] == pytest.approx(1.0) and shares["small"] < 1e-100  # 1e9 ** 100 overflowed a float
    for value in (math.nan, math.inf, 0.0):
        with pytest.raises(ConfigError, match="'temperature' must be above 0"):
            DataConfig(tokenizer="t", streams=streams, temperature=value)
    with pytest.raises(ConfigError, match="'proportion' must be above 0"):
        StreamConfig(local="x", proportion=math.nan)


def test_proportions_that_do_not_sum_to_one_are_named_with_the_shares_used(tmp_path):
    given = {"a": 0.5, "b": 0.3, "c": 0.3}
    config = DataConfig(tokenizer="t", streams={k: StreamConfig(local=k, proportion=v) for k, v in given.items()})
    assert proportions_note(config) == ("note: data.streams' proportions sum to 1.1, not 1; they are divided by their "
                                        "sum, so the run mixes a 0.455, b 0.273, c 0.273 (make them sum to 1 to "
                                        "silence this)")
    config.streams["c"].proportion = 0.2
    assert proportions_note(config) is None


def test_a_tiny_mask_rate_still_predicts_a_token_in_every_micro_batch():
    rng = np.random.default_rng(0)
    ids = np.arange(5, 261, dtype=np.int64)
    special = np.array([0, 1, 2, 3, 4])
    for _ in range(50):
        _, labels = mask_tokens(ids, rng, 0.0005, 3, special, np.arange(5, 300))
        assert (labels != -100).sum() >= 1
    _, labels = mask_tokens(np.array([0, 1, 2]), rng, 0.0005, 3, special, np.arange(5, 300))
    assert (labels == -100).all()  # nothing maskable: nothing picked


@pytest.mark.parametrize("content", ["", '{"version": "1.0", "trunc'])
def test_a_damaged_tokenizer_json_is_one_line_naming_it(tmp_path, sample_data, content):
    broken = tmp_path / "tok"
    shutil.copytree(sample_data["tokenizer"], broken)
    (broken / "tokenizer.json").write_text(content)
    for read in (tokenizer_size_and_specials, tokenizer_fingerprint):
        with pytest.raises(DataError, match=f"{broken / 'tokenizer.json'} (is empty|does not parse)"):
            read(str(broken))


def test_duplicate_ids_in_a_beir_folder_are_refused_naming_both_lines(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "def a(): pass"}\n'
                                           '{"_id": "d2", "text": "def b(): pass"}\n'
                                           '{"_id": "d1", "text": "def c(): pass"}\n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n')
    (tmp_path / "qrels/test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(DataError, match=r"corpus.jsonl line 3: '_id' 'd1' is already the id of line 1"):
        read_beir(tmp_path, "test", "task.yaml")


def test_a_metrics_file_cut_in_its_last_line_is_read_without_it_and_a_damaged_middle_is_named(tmp_path, capsys):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"batch": 1, "tokens": 8}\n{"batch": 2, "tokens": 16}\n{"batch": 3, "tok')
    assert read_metric_records(metrics) == [{"batch": 1, "tokens": 8}, {"batch": 2, "tokens": 16}]
    assert "its last line is cut off" in capsys.readouterr().out
    metrics.write_text('{"batch": 1}\n{"bat\n{"batch": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: not JSON"):
        read_metric_records(metrics)


def test_an_exclude_of_a_folder_excludes_the_files_inside_it(tmp_path):
    """'site-packages/**' matched only folders (Python 3.11's glob), so the sample recipe's code source read every
    package installed beside the standard library, a corpus that differed from machine to machine."""
    from bertforge.data.recipe import InputConfig
    from bertforge.data.sources import _list_files

    for name in ("keep.py", "pkg/keep.py", "site-packages/lib/drop.py", "site-packages/drop.py", "pkg/tests/t.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    files = _list_files(InputConfig(format="files", path=str(tmp_path), include=["**/*.py"],
                                    exclude=["site-packages/**", "**/tests/**"]))
    assert [str(Path(f).relative_to(tmp_path)) for f in files] == ["keep.py", "pkg/keep.py"]



def test_a_symlinked_folder_is_read_once_and_a_link_back_up_the_tree_does_not_loop(tmp_path):
    """Case 8: Python 3.11's glob does not follow symlinked folders, so their files were neither read nor counted."""
    from bertforge.data.recipe import InputConfig
    from bertforge.data.sources import _list_files

    tree, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    for name in (tree / "own.py", elsewhere / "deep" / "linked.py"):
        name.parent.mkdir(parents=True, exist_ok=True)
        name.write_text("x = 1\n")
    (tree / "shards").symlink_to(elsewhere)
    (elsewhere / "back").symlink_to(tree)  # a loop: tree/shards/back is tree again
    (tree / "again").symlink_to(elsewhere)  # the same real folder twice: read once
    files = _list_files(InputConfig(format="files", path=str(tree), include=["**/*.py"]))
    assert [Path(f).resolve() for f in files] == [(elsewhere / "deep" / "linked.py").resolve(), tree / "own.py"]


def test_audit_refusals_that_were_tracebacks_or_silent(tmp_path, sample_data):
    """The fifth audit's cases fixed without a training run (bench/fault_audit.py, docs/faults.md)."""
    from helpers import run_config

    from bertforge.checkpoint.run_folder import read_checkpoint_state
    from bertforge.cli import build_parser
    from bertforge.data.prep import prepare
    from bertforge.data.recipe import load_recipe
    from bertforge.errors import CheckpointError
    from bertforge.train.config import load_train_config
    from bertforge.train.preflight import check_init_from

    # An override of one item of a list: OmegaConf's TypeError traceback.
    with pytest.raises(ConfigError, match=r"an override does not fit the file .*give the whole list"):
        load_recipe(sample_data["recipe"], ["sources.0.name=x"])
    config = run_config(tmp_path, sample_data, "audit")
    # init_from that does not exist: a bare "No such file or directory" after the data and model were built.
    with pytest.raises(ConfigError, match=r"^init_from 'no-such-model' does not exist; give a HuggingFace"):
        check_init_from(load_train_config(config, ["init_from=no-such-model"]))
    # A count of 0 on the command line: `export --all --every 0` exported every checkpoint.
    for argv in (["export", "run", "out", "--all", "--every", "0"], ["finetune", "t.yaml", "m", "--seeds", "0"],
                 ["report", "run", "--every", "-5"]):
        with pytest.raises(SystemExit) as refused:
            build_parser().parse_args(argv)
        assert refused.value.code == 2
    # A folder that is neither a model nor a checkpoint given as a model: a ValueError traceback.
    with pytest.raises(CheckpointError, match=r"a folder that is neither a HuggingFace model .* nor a sharded"):
        read_checkpoint_state(tmp_path)
    # A source whose inputs give no document: prep succeeded, the run failed later far from the cause.
    (tmp_path / "empty.jsonl").write_text("")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"tokenizer": sample_data["tokenizer"], "out_dir": str(tmp_path / "mds"),
                                  "max_seq_len": 64, "workers": 1, "sources": [
                                      {"name": "notes", "inputs": [{"format": "jsonl",
                                                                    "path": str(tmp_path / "empty.jsonl")}]}]}))
    with pytest.raises(DataError, match=r"source 'notes': its inputs gave no document"):
        prepare(load_recipe(recipe), progress=False)
    assert not (tmp_path / "mds" / "notes" / "index.json").exists()
