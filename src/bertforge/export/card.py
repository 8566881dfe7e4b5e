"""What an exported checkpoint says about itself: its model card (README.md) and the index of a run's exports."""

from __future__ import annotations

import yaml


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def index_markdown(rows: list[dict], run_name: str) -> str:
    lines = [f"# Checkpoints of run `{run_name}`", "",
             ("Each folder is a HuggingFace ModernBERT (`AutoModelForMaskedLM.from_pretrained(folder)`). To publish "
              "them as one repository, push each folder to its own branch or tag named after it."), "",
             "| checkpoint | step | tokens | train loss | eval loss |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['step']} | {r['tokens'] if r['tokens'] is not None else '-'} | "
              f"{_loss(r['train_loss'])} | {_loss(r['eval_loss'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def model_card(entry: dict, run_config: dict, run_state: dict) -> str:
    """README.md of an exported checkpoint: what it is, what it saw, and where it came from."""
    model = run_state.get("model_config") or run_config.get("model") or {}
    data = run_config.get("data") or {}
    lineage = run_state.get("lineage") or {}
    streams = data.get("streams") or {}
    lines = [f"# {run_config.get('run_name', 'bertforge run')} at step {entry['step']}", "",
             "A ModernBERT masked-language model exported by bertforge from a training checkpoint.", "",
             "| | |", "|---|---|",
             f"| checkpoint | `{entry['checkpoint']}` |", f"| step | {entry['step']} |",
             f"| tokens seen in this run | {entry['tokens'] if entry['tokens'] is not None else 'unknown'} |",
             f"| train loss at this step | {_loss(entry['train_loss'])} |", "",
             "## Data mixture", "", (f"Tokenizer `{data.get('tokenizer', 'unknown')}`, rows of "
                                     f"{data.get('max_seq_len', '?')} tokens, masking rate "
                                     f"{data.get('mask_rate', '?')}."), "",
             "| stream | dataset | proportion |", "|---|---|---|"]
    lines += [f"| {name} | `{s.get('local') or s.get('remote')}` | {s.get('proportion', '-')} |"
              for name, s in streams.items()]
    lines += ["", "## Lineage", ""]
    if lineage.get("phases"):
        lines.append(f"Phases before this run: {' -> '.join(lineage['phases'])} "
                     f"({lineage.get('tokens_before') or '?'} tokens), started from `{lineage.get('checkpoint')}`.")
    if lineage.get("init_from"):
        lines.append(f"Initial weights from `{lineage['init_from']}`.")
    if not lineage:
        lines.append("Trained from a fresh initialisation.")
    lines += ["", "## Use", "", f"From the folder that holds `{entry['name']}`:", "", "```python",
              usage_snippet(entry["name"]), "```",
              "", "## Architecture", "", "```yaml", yaml.safe_dump(model, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def usage_snippet(model_dir: str) -> str:
    """The model card's code: embeddings with transformers' AutoModel and with sentence-transformers (mean
    pooling, as ModernBERT's retrieval models use), and fill-mask. A test runs it on a real export."""
    return f"""from sentence_transformers import SentenceTransformer, models
from transformers import AutoModel, AutoTokenizer, pipeline

tokenizer = AutoTokenizer.from_pretrained("{model_dir}")
model = AutoModel.from_pretrained("{model_dir}")
hidden = model(**tokenizer("def add(a, b): return a + b", return_tensors="pt")).last_hidden_state

transformer = models.Transformer("{model_dir}")
pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
embedder = SentenceTransformer(modules=[transformer, pooling])
embeddings = embedder.encode(["a sorted list", "def sort(items): return sorted(items)"])

fill = pipeline("fill-mask", model="{model_dir}")
guesses = fill(f"import numpy as {{fill.tokenizer.mask_token}}")"""
