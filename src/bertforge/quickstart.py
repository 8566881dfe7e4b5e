"""`bertforge quickstart`: the built-in sample corpus -> a tokenizer -> shards -> a tiny CPU run -> its
HuggingFace export, then a summary of what it made.

Each step calls the same library functions as its own command (`tokenizer train`, `prep`, `train`), and each is
skipped when its work is done: an existing tokenizer is kept, prep skips the units already made, and a finished run
is not trained again (its export is written again). ``small`` runs the same pipeline on a slice of the corpus in
about a minute, into folders of its own, to check an install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertforge.checkpoint.run_folder import read_metric_records
from bertforge.paths import REPO_ROOT

SAMPLE_RECIPE = REPO_ROOT / "data_prep/sample.yaml"
RUN_CONFIG = REPO_ROOT / "yamls/quickstart.yaml"
VOCAB_SIZE = 8192
"""The tokenizer's size, as the tiny preset's vocab_size expects."""


@dataclass(frozen=True)
class Layout:
    """Where the quickstart writes: the tokenizer and shards under ``data``, the run under ``run``."""

    data: Path
    run: Path
    small: bool = False

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    @property
    def mds(self) -> Path:
        return self.data / "mds"

    @property
    def export(self) -> Path:
        return self.run / "hf"


FULL = Layout(Path("data/sample"), Path("runs/quickstart"))
SMALL = Layout(Path("data/sample-small"), Path("runs/quickstart-small"), small=True)
SMALL_FILES = 40
"""``--small``: files read from each file-based input of the sample recipe."""
SMALL_RUN = ["max_duration=60000tok", "eval.interval=20ba", "checkpoint.interval=20ba", "log_interval=2"]


def sample_recipe(layout: Layout):
    """The sample recipe, writing into ``layout``; ``--small`` reads a slice of each input and holds out 10% (the
    slice's 2% would leave the code source without a held-out document)."""
    from bertforge.data.recipe import load_recipe

    recipe = load_recipe(SAMPLE_RECIPE, [f"tokenizer={layout.tokenizer}", f"out_dir={layout.mds}"])
    if layout.small:
        for source in recipe.sources:
            source.holdout.fraction = 0.1
            for item in source.inputs:
                if item.format in ("files", "docstrings"):
                    item.max_files = SMALL_FILES
    return recipe


def run_config(layout: Layout, overrides: list[str]):
    """yamls/quickstart.yaml pointed at ``layout``, then the user's overrides."""
    from bertforge.train.config import load_train_config

    placed = [f"data.tokenizer={layout.tokenizer}", f"save_folder={layout.run}", f"export_dir={layout.export}",
              *(f"data.streams.{name}.local={layout.mds / name}" for name in ("code", "web", "science"))]
    if layout.small:
        placed += ["run_name=quickstart-small", *SMALL_RUN]
    return load_train_config(RUN_CONFIG, [*placed, *overrides])


def run_quickstart(overrides: list[str], small: bool = False) -> str:
    """Run the four steps (skipping what is done) and return the summary to print."""
    from bertforge.train.signals import record_stop_signals

    record_stop_signals()  # as `bertforge train` does: a SIGTERM during training stops it with a checkpoint
    from bertforge.data.prep import prepare, summarize
    from bertforge.data.sources import recipe_texts
    from bertforge.data.tokenizer import train_tokenizer
    from bertforge.finetune.downstream import train_with_downstream

    layout = SMALL if small else FULL
    config = run_config(layout, overrides)  # first: a bad override fails before any work
    recipe = sample_recipe(layout)
    if (layout.tokenizer / "tokenizer.json").is_file():
        _step(f"1/3 tokenizer: {layout.tokenizer} exists, kept (delete it to train a new one)")
    else:
        _step(f"1/3 tokenizer: training a {VOCAB_SIZE}-token BPE on the sample corpus into {layout.tokenizer}")
        train_tokenizer(recipe_texts(recipe, progress=True), VOCAB_SIZE, layout.tokenizer)
    # Prep always runs: it skips the units already made with this tokenizer and length, and (the sample data being
    # the quickstart's own) makes again those made otherwise.
    _step(f"2/3 prep: the sample corpus into {layout.mds} (finished units are skipped)")
    print(summarize(prepare(recipe, progress=True, force=True)), flush=True)
    _step(f"3/3 train: {config.run_name}, {config.max_duration} on CPU, into {config.save_folder}")
    train_with_downstream(config)
    return summary(layout, config)


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def summary(layout: Layout, config) -> str:
    """Held-out loss and accuracy at the start and the end, the paths written, three fill-mask examples from the
    held-out split, and the commands to try next."""
    evals = [row for row in read_metric_records(layout.run / "metrics.jsonl") if row.get("event") == "eval"]
    lines = ["", "== quickstart done", ""]
    if evals:
        first, last = evals[0], evals[-1]
        lines += [f"held-out MLM ({config.eval.mask_rate:.0%} masked, {last['predictions']:,} predictions):",
                  f"  at {first['tokens']:>9,} tokens: loss {first['loss']:.2f}, "
                  f"top-1 accuracy {first['accuracy']:.1%}",
                  f"  at {last['tokens']:>9,} tokens: loss {last['loss']:.2f}, top-1 accuracy {last['accuracy']:.1%}",
                  ""]
    lines += ["wrote:",
              f"  {layout.tokenizer}/   the tokenizer ({VOCAB_SIZE} tokens)",
              f"  {layout.mds}/   shards per source, each with its held-out eval/ split",
              f"  {layout.run}/   checkpoints, metrics.jsonl, curves.png (loss and LR against tokens)",
              f"  {layout.export}/   the model and tokenizer for transformers and sentence-transformers", "",
              "fill-mask on held-out text (the model's top 3 for [MASK]):"]
    for example in fill_mask_examples(layout.export, [layout.mds / name / "eval" for name in config.data.streams]):
        lines += [f"  {example['stream']}: ...{example['text']}...",
                  f"    truth {example['truth']!r}; model: {', '.join(repr(t) for t in example['top3'])}"]
    streams = ",".join(str(layout.mds / name / "eval") for name in config.data.streams)
    lines += ["", "next:",
              f"  bertforge eval mlm {layout.export} --data {streams}",
              (f"  python data_prep/make_source_task.py data_prep/sample.yaml {layout.data}/source-task && "
               f"bertforge finetune yamls/finetune/sample-source.yaml {layout.export}"),
              "  bertforge plan yamls/modernbert-base/decay.yaml   # the ModernBERT-base recipe, three phases",
              "  docs/: model, data, training, eval, finetune, phases, slurm"]
    return "\n".join(lines)


def fill_mask_examples(export: Path, eval_sets: list[Path], window: int = 24) -> list[dict]:
    """One example per held-out set: in its first document holding a whole word of four letters or more (past
    the first eight tokens), that word masked in a window of ``window`` tokens around it, and the export's three
    best guesses, as transformers' AutoModelForMaskedLM computes them from the exported directory."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from bertforge.data.config import DataConfig, StreamConfig
    from bertforge.data.loader import open_stream_dataset

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModelForMaskedLM.from_pretrained(export).eval()
    examples = []
    for path in eval_sets:
        name = path.parent.name
        dataset = open_stream_dataset(name, DataConfig(tokenizer=str(export), streams={name: StreamConfig(
            local=str(path))}))
        for index in range(dataset.num_samples):
            ids = [int(t) for t in dataset[index]["tokens"][1:-1]]  # without [CLS] and [SEP]
            spot = next((i for i in range(8, len(ids)) if _is_word(tokenizer.decode([ids[i]]))), None)
            if spot is not None:
                break
        else:
            continue
        first = max(0, spot - window // 2)
        ids, spot = ids[first:first + window], spot - first
        inputs = torch.tensor([[tokenizer.cls_token_id, *ids[:spot], tokenizer.mask_token_id, *ids[spot + 1:],
                                tokenizer.sep_token_id]])
        with torch.no_grad():
            logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits[0, spot + 1]
        text = f"{tokenizer.decode(ids[:spot])} [MASK]{tokenizer.decode(ids[spot + 1:])}"
        examples.append({"stream": name, "text": " ".join(text.split()), "truth": tokenizer.decode([ids[spot]]).strip(),
                         "top3": [tokenizer.decode([int(i)]).strip() for i in logits.topk(3).indices]})
    return examples


def _is_word(piece: str) -> bool:
    """A whole word with its leading space: the masked spot then reads as ' [MASK]' in the decoded text."""
    return piece.startswith(" ") and piece.strip().isalpha() and len(piece.strip()) >= 4
