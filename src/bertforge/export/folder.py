"""`bertforge export`: a model or checkpoint -> a HuggingFace directory that transformers' Auto classes, pipelines
and sentence-transformers use as they are; with ``--all``, every checkpoint of a run, with an index and a model
card each (card.py).

Checkpoints are read through checkpoint/read.py: ours, or the ModernBERT research repository's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from bertforge import __version__
from bertforge.atomic import write_text_atomic
from bertforge.checkpoint.manifest import verify_checkpoint
from bertforge.checkpoint.read import read_checkpoint, read_model, recorded_tokenizer
from bertforge.checkpoint.run_folder import RunFolder, checkpoint_batch, fetch_checkpoint, read_metric_records
from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.data.tokenizer import SpecialIds, save_model_tokenizer
from bertforge.errors import CheckpointError, ConfigError
from bertforge.export.card import index_markdown, model_card
from bertforge.failures import disk_full
from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.hf_io import from_hf_config, read_hf_config
from bertforge.store import is_remote


def export_model(model, out_dir: str | Path, tokenizer: str | None = None, max_length: int | None = None) -> Path:
    """Write ``model`` (a masked LM or a classifier) and the tokenizer as a HuggingFace directory that transformers'
    Auto classes, pipelines and sentence-transformers use as they are (data.tokenizer.save_model_tokenizer);
    ``max_length`` is the context the model was trained at. A model with non-finite weights, or a tokenizer that
    does not fit it, is refused before anything is written."""
    broken = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if broken:
        raise CheckpointError(f"refusing to export a model with non-finite weights ({', '.join(broken[:3])}"
                              f"{' ...' if len(broken) > 3 else ''})")
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.export-"))
    try:
        if tokenizer:  # first: a tokenizer that does not fit the model is refused before the model is written
            _save_tokenizer(tokenizer, staging, model.config, max_length)
        model.save_pretrained(staging)
        (staging / EXPORT_MARKER).write_text(json.dumps({"bertforge": __version__}) + "\n")
        _replace_folder(staging, out_dir)
    except Exception as err:
        if disk_full(err):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir.parent)) from err
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


EXPORT_MARKER = ".bertforge-export"
"""Written into every export (its bertforge version): the mark of a folder the next export may replace."""
_EXPORT_NAMES = {"config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "README.md",
                 "model.safetensors.index.json", EXPORT_MARKER}


def check_replaceable(out_dir: Path) -> None:
    """An export replaces its folder whole; refuse (touching nothing) a folder that holds anything else than an
    earlier bertforge export: the user's own files, or a model from elsewhere (a Hub download looks the same but
    lacks EXPORT_MARKER)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file; name a folder to export into")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if EXPORT_MARKER not in entries:
        raise ConfigError(f"{out_dir} holds files that bertforge did not export ({', '.join(entries[:4])}"
                          f"{', ...' if len(entries) > 4 else ''}); an export replaces its folder whole, so export "
                          f"into a new or empty folder (nothing was changed)")
    others = [name for name in entries if name not in _EXPORT_NAMES
              and not (name.startswith("model") and name.endswith(".safetensors"))]
    if others:
        raise ConfigError(f"{out_dir} holds an earlier export and other files ({', '.join(others[:4])}"
                          f"{', ...' if len(others) > 4 else ''}); an export replaces its folder whole, so move them "
                          f"out or export into a new folder (nothing was changed)")


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
    save_model_tokenizer(tokenizer, out_dir, vocab_size=config.vocab_size, max_positions=config.max_position_embeddings,
                         specials=SpecialIds(config.cls_token_id, config.sep_token_id, config.pad_token_id,
                                             config.mask_token_id), max_length=max_length)


def fix_tokenizer(model_dir: str | Path) -> Path:
    """`bertforge export DIR --fix-tokenizer`: rewrite the tokenizer configuration of an export made by an earlier
    bertforge (which let ``token_type_ids`` through, so AutoModel and sentence-transformers refused its inputs) in
    place, as export_model now writes it."""
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
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ModernBertForMaskedLM(model_config)
    return export_model(model, out_dir, tokenizer)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, tokenizer: str | None = None,
                      model_config: ModernBertConfig | None = None) -> Path:
    """A checkpoint (a file or directory, or the URL of one in an object store, or of a save_folder there: its
    newest complete checkpoint) as a HuggingFace directory."""
    if is_remote(checkpoint):
        checkpoint = fetch_checkpoint(str(checkpoint))
    elif is_run_folder(Path(checkpoint)):
        found = RunFolder(checkpoint).newest_valid_checkpoint()
        if found is None:
            raise CheckpointError(f"{checkpoint}: a run folder with no checkpoint that verifies; nothing to export")
        print(f"exporting the run's newest complete checkpoint, {found}", flush=True)
        checkpoint = found
    model, known = read_model(Path(checkpoint), model_config=model_config)
    _check_tokenizer(tokenizer, known, checkpoint)
    return export_model(model, out_dir, tokenizer or known["tokenizer"], known["max_length"])


def is_run_folder(path: Path) -> bool:
    """A run's save_folder (its config.yaml, or checkpoints in it), not a sharded checkpoint's directory."""
    return path.is_dir() and not (path / ".metadata").is_file() and (
        (path / "config.yaml").is_file() or bool(RunFolder(path).checkpoints()))


def _check_tokenizer(tokenizer: str | None, run_state: dict, checkpoint) -> None:
    """Refuse a tokenizer other than the one the checkpoint's run trained with (its recorded fingerprint)."""
    recorded = run_state.get("tokenizer_fingerprint")
    if tokenizer and recorded and tokenizer_fingerprint(tokenizer) != recorded:
        raise CheckpointError(f"{checkpoint} was trained with tokenizer '{run_state.get('tokenizer')}' (fingerprint "
                              f"{recorded}); '{tokenizer}' maps text to other ids (fingerprint "
                              f"{tokenizer_fingerprint(tokenizer)}); export with "
                              f"--tokenizer {run_state.get('tokenizer')}")


def export_run(run_dir: str | Path, out_dir: str | Path, *, every_tokens: int | None = None,
               tokenizer: str | None = None) -> list[dict]:
    """Every checkpoint of a run that verifies (or the first at or past each multiple of ``every_tokens``) as a
    HuggingFace directory ``step<batch>-tokens<tokens>`` with a model card, plus ``index.json`` and ``index.md``
    (step, tokens, train and eval loss from metrics.jsonl). Returns the index rows."""
    if is_remote(run_dir):
        raise ConfigError(f"--all exports a local run folder, not {run_dir}; export its checkpoints one by one "
                          f"(`bertforge export {run_dir}/ep0-baN-rank0.pt OUT`) or copy the folder here first")
    folder = RunFolder(run_dir)
    checkpoints = sorted(folder.checkpoints(), key=checkpoint_batch)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}: no checkpoints (ep*-ba*) to export")
    run_config = yaml.safe_load(folder.config.read_text()) if folder.config.is_file() else {}
    metrics, evals = {}, {}
    if folder.metrics.is_file():
        for row in read_metric_records(folder.metrics):
            if "event" not in row:
                metrics[row["batch"]] = row
            elif row["event"] == "eval":
                evals[row["batch"]] = row["loss"]
    out_dir = Path(out_dir)
    rows, last_multiple = [], -1
    for checkpoint in checkpoints:
        problem = verify_checkpoint(checkpoint)
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
        model, run_state = read_checkpoint(checkpoint, verified=True)  # verified above
        _check_tokenizer(tokenizer, run_state, checkpoint)
        its_tokenizer = tokenizer or recorded_tokenizer(run_state, checkpoint)
        name = f"step{batch:07d}-tokens{tokens if tokens is not None else 'unknown'}"
        entry = {"name": name, "step": batch, "tokens": tokens, "train_loss": row.get("loss"),
                 "eval_loss": evals.get(batch), "checkpoint": str(checkpoint)}
        export_model(model, out_dir / name, its_tokenizer, (run_config.get("data") or {}).get("max_seq_len"))
        write_text_atomic(out_dir / name / "README.md", model_card(entry, run_config, run_state))
        rows.append(entry)
        print(f"exported {checkpoint.name} -> {out_dir / name}", flush=True)
    write_text_atomic(out_dir / "index.json", json.dumps(rows, indent=1) + "\n")
    write_text_atomic(out_dir / "index.md", index_markdown(rows, run_config.get("run_name", str(run_dir))))
    return rows
