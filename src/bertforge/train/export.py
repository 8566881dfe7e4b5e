"""`bertforge export`: a checkpoint -> a HuggingFace directory; with ``--all``, every checkpoint of a run, with an
index and a model card each.

A checkpoint is one we wrote (a monolithic .pt, or an FSDP2 sharded directory), or a Composer checkpoint of the
ModernBERT research repository (research_checkpoint.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from bertforge.errors import CheckpointError
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked
from bertforge.schema import ConfigError
from bertforge.train.checkpoint_integrity import manifest_path, verify
from bertforge.train.run_folder import read_checkpoint_state


def load_checkpoint_model(path: str | Path, model_config: ModernBertConfig | None = None) -> ModernBertForMaskedLM:
    """The model of a checkpoint; ``model_config`` gives the architecture of a research checkpoint that stores
    none."""
    return _read_checkpoint(Path(path), model_config)[0]


def load_masked_lm(path: str | Path) -> ModernBertForMaskedLM:
    """A HuggingFace ModernBERT directory (ours or transformers'), or a checkpoint (ours or the research
    repository's), as our masked LM."""
    return read_model(path)[0]


def read_model(path: str | Path) -> tuple[ModernBertForMaskedLM, dict]:
    """``load_masked_lm``'s model, with what is known of its tokenizer: ``tokenizer`` (a name or directory),
    ``tokenizer_fingerprint`` and ``max_length`` (the context it was trained at), each None when unknown."""
    from bertforge.data.provenance import tokenizer_fingerprint

    path = Path(path)
    if (path / "config.json").is_file():
        has_tokenizer = (path / "tokenizer.json").is_file()
        return ModernBertForMaskedLM.from_pretrained(path), {
            "tokenizer": str(path) if has_tokenizer else None,
            "tokenizer_fingerprint": tokenizer_fingerprint(str(path)) if has_tokenizer else None, "max_length": None}
    model, run_state = _read_checkpoint(path)
    return model, {"tokenizer": run_state.get("tokenizer"), "tokenizer_fingerprint": run_state.get(
        "tokenizer_fingerprint"), "max_length": _trained_length(path.parent / "config.yaml")}


def _read_checkpoint(path: Path, model_config: ModernBertConfig | None = None,
                     verified: bool = False) -> tuple[ModernBertForMaskedLM, dict]:
    """The model and our RunState record ({} for a research checkpoint). A checkpoint with a manifest beside it is
    verified first, unless the caller has (``verified``): hashing a large checkpoint twice costs minutes."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at '{path}'")
    if not verified and manifest_path(path).is_file() and (problem := verify(path)) is not None:
        raise CheckpointError(f"{path}: {problem}; export another checkpoint (`bertforge export RUN_DIR OUT --all` "
                              f"exports each one that verifies)")
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


def export_model(model, out_dir: str | Path, tokenizer: str | None = None, max_length: int | None = None) -> Path:
    """Write ``model`` (a masked LM or a classifier) and the tokenizer as a HuggingFace directory that transformers'
    Auto classes, pipelines and sentence-transformers use as they are (data.tokenizer.save_model_tokenizer);
    ``max_length`` is the context the model was trained at. A model with non-finite weights, or a tokenizer that
    does not fit it, is refused before anything is written."""
    import torch

    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"refusing to export a model with non-finite weights ({', '.join(broken[:3])}"
                              f"{' ...' if len(broken) > 3 else ''})")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise ConfigError(f"{out_dir} holds files but no exported model; an export replaces its folder whole, so "
                          f"export into a new or empty folder, or one that holds an earlier export")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    try:
        if tokenizer:  # first: a tokenizer that does not fit the model is refused before the model is written
            _save_tokenizer(tokenizer, staging, model.config, max_length)
        model.save_pretrained(staging)
        _replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _replace_folder(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` in place of ``target`` by renames, so no file of an earlier export survives
    beside the new one, and a kill leaves the old folder or the new one (and at most a hidden leftover beside)."""
    if target.exists():
        old = target.with_name(f".{target.name}.replaced-{os.getpid()}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    else:
        os.rename(new, target)


def _save_tokenizer(tokenizer: str, out_dir: str | Path, config: ModernBertConfig, max_length: int | None) -> None:
    from bertforge.data.tokenizer import SpecialIds, save_model_tokenizer

    save_model_tokenizer(tokenizer, out_dir, vocab_size=config.vocab_size, max_positions=config.max_position_embeddings,
                         specials=SpecialIds(config.cls_token_id, config.sep_token_id, config.pad_token_id,
                                             config.mask_token_id), max_length=max_length)


def fix_tokenizer(model_dir: str | Path) -> Path:
    """`bertforge export DIR --fix-tokenizer`: rewrite the tokenizer configuration of an export made by an earlier
    bertforge (which let ``token_type_ids`` through, so AutoModel and sentence-transformers refused its inputs) in
    place, as export_model now writes it."""
    from bertforge.model.hf_io import from_hf_config, read_hf_config

    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no tokenizer_config.json; --fix-tokenizer rewrites the tokenizer of "
                                f"an exported model directory")
    config = from_hf_config(read_hf_config(model_dir), source=str(model_dir / "config.json"))
    with tempfile.TemporaryDirectory(dir=model_dir) as tmp:
        _save_tokenizer(str(model_dir), tmp, config, None)
        for item in Path(tmp).iterdir():
            os.replace(item, model_dir / item.name)
    return model_dir


def export_fresh_model(model_config: ModernBertConfig, out_dir: str | Path, seed: int,
                       tokenizer: str | None = None) -> Path:
    """`bertforge model init`: a freshly initialised masked LM (seeded, without touching the global RNG) as a
    HuggingFace directory, with ``tokenizer`` beside it when given."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ModernBertForMaskedLM(model_config)
    return export_model(model, out_dir, tokenizer)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | None = None,
                      model_config: ModernBertConfig | None = None) -> Path:
    """A checkpoint (a file or directory, or the URL of one in an object store, or of a save_folder there: its
    newest complete checkpoint) as a HuggingFace directory."""
    from bertforge.store import is_remote
    from bertforge.train.run_folder import fetch_checkpoint

    if is_remote(checkpoint):
        checkpoint = fetch_checkpoint(str(checkpoint))
    model, run_state = _read_checkpoint(Path(checkpoint), model_config)
    _check_tokenizer(tokenizer, run_state, checkpoint)
    return export_model(model, out_dir, tokenizer, _trained_length(Path(checkpoint).parent / "config.yaml"))


def _check_tokenizer(tokenizer: str | None, run_state: dict, checkpoint) -> None:
    """Refuse a tokenizer other than the one the checkpoint's run trained with (its recorded fingerprint)."""
    from bertforge.data.provenance import tokenizer_fingerprint

    recorded = run_state.get("tokenizer_fingerprint")
    if tokenizer and recorded and tokenizer_fingerprint(tokenizer) != recorded:
        raise CheckpointError(f"{checkpoint} was trained with tokenizer '{run_state.get('tokenizer')}' (fingerprint "
                              f"{recorded}); '{tokenizer}' maps text to other ids (fingerprint "
                              f"{tokenizer_fingerprint(tokenizer)}); export with --tokenizer {run_state.get('tokenizer')}")


def _trained_length(run_config: Path) -> int | None:
    """The row length of the run whose resolved config.yaml this is (the context its model was trained at)."""
    import yaml

    if not run_config.is_file():
        return None
    return ((yaml.safe_load(run_config.read_text()) or {}).get("data") or {}).get("max_seq_len")


def export_run(run_dir: str | Path, out_dir: str | Path, *, every_tokens: int | None = None,
               tokenizer: str | None = None) -> list[dict]:
    """Every checkpoint of a run that verifies (or the first at or past each multiple of ``every_tokens``) as a
    HuggingFace directory ``step<batch>-tokens<tokens>`` with a model card, plus ``index.json`` and ``index.md``
    (step, tokens, train and eval loss from metrics.jsonl). Returns the index rows."""
    import json

    import yaml

    from bertforge.atomic import write_text_atomic
    from bertforge.store import is_remote
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
        model, run_state = _read_checkpoint(checkpoint, verified=True)  # verified above
        _check_tokenizer(tokenizer, run_state, checkpoint)
        name = f"step{batch:07d}-tokens{tokens if tokens is not None else 'unknown'}"
        entry = {"name": name, "step": batch, "tokens": tokens, "train_loss": row.get("loss"),
                 "eval_loss": evals.get(batch), "checkpoint": str(checkpoint)}
        export_model(model, out_dir / name, tokenizer, (run_config.get("data") or {}).get("max_seq_len"))
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
embedder = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_word_embedding_dimension(), "mean")])
embeddings = embedder.encode(["a sorted list", "def sort(items): return sorted(items)"])

fill = pipeline("fill-mask", model="{model_dir}")
guesses = fill(f"import numpy as {{fill.tokenizer.mask_token}}")"""
