"""The frozen-encoder probe (finetune/probe.py): its scores on tasks whose answer is known, its fixed sample of
rows, and the preflight's refusals. The probe in a training run: tests/eval/test_eval.py."""

import contextlib

import numpy as np
import pytest
import torch
import yaml
from helpers import run_config, write_probe_tasks

from bertforge.data.tokenizer import load_tokenizer
from bertforge.errors import ConfigError
from bertforge.finetune.config import load_task
from bertforge.finetune.probe import load_probe_task, run_probes
from bertforge.model import ModernBertForMaskedLM
from bertforge.train.config import load_train_config
from bertforge.train.preflight import check_probe_tasks


def _setup(tmp_path, sample_data, max_rows=1000):
    tmp_path.mkdir(exist_ok=True)
    config = load_train_config(run_config(tmp_path, sample_data, "probe"))
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(config.model)
    tokenizer = load_tokenizer(sample_data["tokenizer"]).backend_tokenizer
    paths = write_probe_tasks(tmp_path / "tasks")
    probes = [load_probe_task(load_task(p), tokenizer, config.model.cls_token_id, config.model.sep_token_id,
                              max_rows) for p in paths]
    return model, probes, paths


def test_a_fresh_model_separates_code_from_prose_and_finds_an_exact_copy(tmp_path, sample_data):
    model, probes, _ = _setup(tmp_path, sample_data)
    model.train()
    results = run_probes(model, probes, "cpu", contextlib.nullcontext)
    assert model.training  # put back as it was
    assert results["probe-kind"]["metric"] == "accuracy" and results["probe-kind"]["score"] >= 0.9
    # Every query is its document's exact text, among reversed ids and as many distractors: ranked first.
    assert results["probe-echo"]["metric"] == "ndcg@10" and results["probe-echo"]["score"] == pytest.approx(1.0)
    retrieval = probes[1]
    assert retrieval.relevance.shape == (20, 40) and retrieval.relevance.sum() == 20
    assert all(row["seconds"] > 0 for row in results.values())


def test_the_rows_are_a_fixed_sample_of_at_most_max_rows(tmp_path, sample_data):
    _, probes, _ = _setup(tmp_path, sample_data, max_rows=12)
    kind, echo = probes
    assert len(kind.train.ids) == len(kind.scored.ids) == 12
    assert set(kind.train.labels) == {0, 1}  # a sample, not the file's first rows
    # 12 queries, and their 12 rated documents (the distractors cut): each row rates exactly one column.
    assert echo.relevance.shape == (12, 12) and np.array_equal(echo.relevance.sum(axis=0), np.ones(12))
    _, again, _ = _setup(tmp_path / "again", sample_data, max_rows=12)
    assert again[0].train.ids == kind.train.ids and np.array_equal(again[1].relevance, echo.relevance)


def test_the_preflight_refuses_what_the_probe_cannot_score(tmp_path, sample_data):
    _, _, (kind, _) = _setup(tmp_path, sample_data)
    multi = yaml.safe_load(kind.read_text())
    multi["head"].update(problem_type="multi_label_classification")
    (tmp_path / "tasks" / "multi.yaml").write_text(yaml.safe_dump(multi))
    config = load_train_config(run_config(tmp_path, sample_data, "p", eval={"interval": "4ba"}),
                               [f"eval.probe.tasks=[{tmp_path / 'tasks' / 'multi.yaml'}]"])
    with pytest.raises(ConfigError, match=r"multi.yaml is a multi-label task"):
        check_probe_tasks(config)
    (tmp_path / "tasks" / "validation.jsonl").unlink()
    config = load_train_config(run_config(tmp_path, sample_data, "p", eval={"interval": "4ba"}),
                               [f"eval.probe.tasks=[{kind}]"])
    with pytest.raises(ConfigError, match=r"data.files.validation is .*validation.jsonl, which does not exist"):
        check_probe_tasks(config)
    with pytest.raises(ConfigError, match=r"'eval.probe.tasks' are probed at every evaluation, and 'eval.interval' "):
        load_train_config(run_config(tmp_path, sample_data, "p"), [f"eval.probe.tasks=[{kind}]"])
