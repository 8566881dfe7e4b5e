"""`bertforge export`: a checkpoint -> a HuggingFace directory; with ``--all``, every checkpoint of a run, with an
index and a model card each.

A checkpoint is one we wrote (a monolithic .pt, or an FSDP2 sharded directory), or a Composer checkpoint of the
ModernBERT research repository (research_checkpoint.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bertforge.errors import CheckpointError
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked
from bertforge.train.run_folder import read_checkpoint_state


def load_checkpoint_model(path: str | Path, model_config: ModernBertConfig | None = None) -> ModernBertForMaskedLM:
    """The model of a checkpoint; ``model_config`` gives the architecture of a research checkpoint that stores
    none."""
    return _read_checkpoint(Path(path), model_config)[0]


def _read_checkpoint(path: Path, model_config: ModernBertConfig | None = None) -> tuple[ModernBertForMaskedLM, dict]:
    """The model and our RunState record ({} for a research checkpoint)."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    state = read_checkpoint_state(path)
    run_state = next((v for k, v in state.get("callbacks", {}).items() if k.startswith("RunState")), None)
    if run_state is None:
        from bertforge.train.research_checkpoint import is_research_layout, read_research_checkpoint

        if path.is_file() and is_research_layout(state.get("model") or {}):
            return read_research_checkpoint(path, model_config)[0], {}
        raise CheckpointError(f"{path}: not a bertforge checkpoint (no RunState with the model config) nor one in "
                              f"the research repository's layout")
    model = ModernBertForMaskedLM(ModernBertConfig(**run_state["model_config"]), init=False)
    weights = {k.removeprefix("model."): v for k, v in state["model"].items()}
    load_state_dict_checked(model, weights, source=str(path))
    return model, run_state


def export_model(model, out_dir: str | Path, tokenizer: str | None = None) -> Path:
    """Write ``model`` (a masked LM or a classifier) and the tokenizer as a HuggingFace directory; a model with
    non-finite weights is refused."""
    import torch

    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"refusing to export a model with non-finite weights ({', '.join(broken[:3])}"
                              f"{' ...' if len(broken) > 3 else ''})")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    if tokenizer:
        from bertforge.data.tokenizer import load_tokenizer

        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            load_tokenizer(tokenizer).save_pretrained(tmp)
            for item in Path(tmp).iterdir():
                shutil.move(str(item), out_dir / item.name)
    return out_dir


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | None = None,
                      model_config: ModernBertConfig | None = None) -> Path:
    """A checkpoint (a file or directory, or the URL of one in an object store, or of a save_folder there: its
    newest complete checkpoint) as a HuggingFace directory."""
    from bertforge.store import is_remote
    from bertforge.train.run_folder import fetch_checkpoint

    if is_remote(checkpoint):
        checkpoint = fetch_checkpoint(str(checkpoint))
    return export_model(load_checkpoint_model(checkpoint, model_config), out_dir, tokenizer)


def export_run(run_dir: str | Path, out_dir: str | Path, *, every_tokens: int | None = None,
               tokenizer: str | None = None) -> list[dict]:
    """Every checkpoint of a run that verifies (or the first at or past each multiple of ``every_tokens``) as a
    HuggingFace directory ``step<batch>-tokens<tokens>`` with a model card, plus ``index.json`` and ``index.md``
    (step, tokens, train and eval loss from metrics.jsonl). Returns the index rows."""
    import json

    import yaml

    from bertforge.atomic import write_text_atomic
    from bertforge.schema import ConfigError
    from bertforge.store import is_remote
    from bertforge.train.checkpoint_integrity import verify
    from bertforge.train.run_folder import RunFolder, checkpoint_batch

    if is_remote(run_dir):
        raise ConfigError(f"--all exports a local run folder, not {run_dir}; export its checkpoints one by one "
                          f"(`bertforge export {run_dir}/ep0-baN-rank0.pt OUT`) or copy the folder here first")
    folder = RunFolder(run_dir)
    checkpoints = sorted(folder.checkpoints(), key=checkpoint_batch)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints (ep*-ba*) to export")
    run_config = yaml.safe_load(folder.config.read_text()) if folder.config.is_file() else {}
    tokenizer = tokenizer or (run_config.get("data") or {}).get("tokenizer")
    metrics, evals = {}, {}
    if folder.metrics.is_file():
        for line in folder.metrics.read_text().splitlines():
            row = json.loads(line)
            if "event" not in row:
                metrics[row["batch"]] = row
            elif row["event"] == "eval":
                evals[row["batch"]] = row["loss"]
    out_dir = Path(out_dir)
    rows, last_multiple = [], -1
    for checkpoint in checkpoints:
        problem = verify(checkpoint)
        if problem is not None:
            print(f"skipping {checkpoint}: {problem}", flush=True)
            continue
        batch = checkpoint_batch(checkpoint)
        row = metrics.get(batch, {})
        tokens = row.get("tokens")
        if every_tokens:
            if tokens is None or tokens // every_tokens == last_multiple:
                continue
            last_multiple = tokens // every_tokens
        model, run_state = _read_checkpoint(checkpoint)
        name = f"step{batch:07d}-tokens{tokens if tokens is not None else 'unknown'}"
        entry = {"name": name, "step": batch, "tokens": tokens, "train_loss": row.get("loss"),
                 "eval_loss": evals.get(batch), "checkpoint": str(checkpoint)}
        export_model(model, out_dir / name, tokenizer)
        write_text_atomic(out_dir / name / "README.md", model_card(entry, run_config, run_state))
        rows.append(entry)
        print(f"exported {checkpoint.name} -> {out_dir / name}", flush=True)
    write_text_atomic(out_dir / "index.json", json.dumps(rows, indent=1) + "\n")
    write_text_atomic(out_dir / "index.md", _index_markdown(rows, run_config.get("run_name", str(run_dir))))
    return rows


def _loss(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _index_markdown(rows: list[dict], run_name: str) -> str:
    lines = [f"# Checkpoints of run `{run_name}`", "",
             ("Each folder is a HuggingFace ModernBERT (`AutoModelForMaskedLM.from_pretrained(folder)`). To publish "
              "them as one repository, push each folder to its own branch or tag named after it."), "",
             "| checkpoint | step | tokens | train loss | eval loss |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['step']} | {r['tokens'] if r['tokens'] is not None else '-'} | "
              f"{_loss(r['train_loss'])} | {_loss(r['eval_loss'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def model_card(entry: dict, run_config: dict, run_state: dict) -> str:
    """README.md of an exported checkpoint: what it is, what it saw, and where it came from."""
    import yaml

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
    lines += ["", "## Architecture", "", "```yaml", yaml.safe_dump(model, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
