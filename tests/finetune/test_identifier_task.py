"""The real-or-made-up identifier task (data_prep/make_identifier_task.py): balanced, no validation name in a training
row, every real name defined in a file pretraining reads, no made-up name anywhere in the corpus, and made-up names
built from the real names' own pieces."""

import json
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, small_sample_recipe

from bertforge.data.prep import held_out
from bertforge.data.recipe import load_recipe
from bertforge.data.sources import plan_units
from bertforge.finetune.config import load_task

MAKE = str(ROOT / "data_prep/make_identifier_task.py")


def test_made_up_names_share_the_real_ones_pieces_and_validation_names_never_occur_in_training(tmp_path):
    recipe = small_sample_recipe(tmp_path, tmp_path / "tokenizer", files=150)
    made = subprocess.run([sys.executable, MAKE, str(recipe), str(tmp_path / "task")], capture_output=True, text=True,
                          timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    rows = {split: [json.loads(line) for line in (tmp_path / "task" / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "validation")}
    assert len(rows["validation"]) >= 40
    for split_rows in rows.values():
        assert sum(r["label"] == "real" for r in split_rows) * 2 == len(split_rows)
    assert not {r["text"] for r in rows["validation"]} & {r["text"] for r in rows["train"]}
    source = next(s for s in load_recipe(recipe).sources if s.name == "code")
    fraction = source.holdout.fraction
    texts = [Path(f).read_text(errors="replace") for u in plan_units(source, 100) for f in u.files]
    words = {w for text in texts for w in re.findall(r"\w+", text)}
    pretrained = "\n".join(t for t in texts if not held_out(t, fraction))
    every = [r for split_rows in rows.values() for r in split_rows]
    for row in every:
        if row["label"] == "real":
            assert re.search(rf"(def|class) {re.escape(row['text'])}\b", pretrained), row
        else:
            assert row["text"] not in words, row
    real_pieces = {p for r in every if r["label"] == "real" for p in re.split(r"_|(?<=[a-z0-9])(?=[A-Z])", r["text"])}
    fake_pieces = {p for r in every if r["label"] == "made-up"
                   for p in re.split(r"_|(?<=[a-z0-9])(?=[A-Z])", r["text"])}
    assert len(fake_pieces - real_pieces) <= len(fake_pieces) // 20  # the same pieces (splitting rules differ a little)
    task = load_task(ROOT / "yamls/finetune/sample-identifier.yaml")
    assert task.head.labels == ["real", "made-up"] and task.main_metric == "accuracy"
