"""The syntax-validity task (data_prep/make_syntax_task.py): labels are Python's own verdict, the classes are
balanced, and validation functions come only from files pretraining holds out."""

import json
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import ROOT, small_sample_recipe

from bertforge.finetune.config import load_task

MAKE = str(ROOT / "data_prep/make_syntax_task.py")


def _recipe(tmp_path: Path, fraction: float) -> Path:
    path = small_sample_recipe(tmp_path, tmp_path / "tokenizer", files=80)
    recipe = yaml.safe_load(path.read_text())
    recipe["sources"] = [s for s in recipe["sources"] if s["name"] == "code"]
    recipe["holdout"] = {"fraction": fraction}
    path.write_text(yaml.safe_dump(recipe))
    return path


def _valid(text: str) -> bool:
    try:
        compile(text, "<test>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def test_labels_are_the_compilers_verdict_and_validation_functions_were_held_out(tmp_path):
    recipe = _recipe(tmp_path, 0.3)
    out = tmp_path / "task"
    made = subprocess.run([sys.executable, MAKE, str(recipe), str(out), "--per-class", "60",
                           "--validation-per-class", "15"], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    rows = {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "validation")}
    assert len(rows["train"]) == 120 and len(rows["validation"]) == 30
    for split in rows.values():
        assert sum(r["label"] == "valid" for r in split) == len(split) // 2
        for row in split:
            assert (row["label"] == "valid") == _valid(row["text"]), row
            assert row["edit"] in ("delete", "repeat", "swap", "replace")
        assert len({r["edit"] for r in split}) >= 3
    # Validation comes from other files than training: with no held-out file, the two sets of functions differ.
    function_names = {split: {r["text"].split("(")[0] for r in split_rows} for split, split_rows in rows.items()}
    assert len(function_names["validation"] - function_names["train"]) >= len(function_names["validation"]) // 2
    # The shipped task YAML reads these files as they are.
    task = load_task(ROOT / "yamls/finetune/sample-syntax.yaml", [f"data.files.train={out / 'train.jsonl'}",
                                                                  f"data.files.validation={out / 'validation.jsonl'}"])
    assert task.head.labels == ["valid", "invalid"] and task.main_metric == "accuracy"


def test_a_recipe_that_holds_out_nothing_is_refused(tmp_path):
    made = subprocess.run([sys.executable, MAKE, str(_recipe(tmp_path, 0.0)), str(tmp_path / "task")],
                          capture_output=True, text=True, timeout=600)
    assert made.returncode != 0
    assert "holds out nothing ('holdout.fraction' is 0)" in made.stderr
    assert not (tmp_path / "task" / "train.jsonl").exists()
