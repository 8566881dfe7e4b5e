"""One check of a run before it launches, for every command that launches or plans one.

`bertforge train` calls it before it builds anything, `bertforge slurm` before it writes or submits a script, and
`bertforge plan` before it plans; so a job the trainer would refuse is refused at submission, with the same
message. Each value's own range is checked when the config is built (the ``__post_init__`` of its dataclass);
what is checked here needs several keys together, the number of ranks, the device, or the files the run reads.
Imports no torch (see ``tokenizer_size_and_specials`` for how the tokenizer is read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from bertforge.data.config import stream_location
from bertforge.data.integrity import check_prepared_stream
from bertforge.data.mixture import proportions_note
from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.data.tokenizer import tokenizer_size_and_specials
from bertforge.errors import ConfigError
from bertforge.finetune.suite import check_tasks, load_suite
from bertforge.store import RemoteFolder, is_remote
from bertforge.train.config import TrainConfig


def preflight(config: TrainConfig, world_size: int, *, device: Literal["cpu", "gpu"] | None,
              files: bool = True) -> None:
    """Raise a ConfigError naming the key and the fix for the first problem found.

    ``device`` is where the ranks run (None: not known yet, as in `plan`); ``files`` checks the data and the
    tokenizer the run will read (off where they need not exist yet, as in `plan`).
    """
    check_batch(config, world_size)
    check_lengths(config)
    if files:
        check_save_folder(config)
        check_data_paths(config)
        check_tokenizer_fits(config)
        check_eval_streams(config)
        check_probe_tasks(config)
        check_init_from(config)
    check_schedule(config)
    if device is not None:
        check_device(config, device)
    note = proportions_note(config.data)
    if note:
        print(note, flush=True)


def check_batch(config: TrainConfig, world_size: int) -> None:
    """The global batch (and the warmup's start) must split into whole micro-batches on every rank."""
    if world_size < 1:
        raise ConfigError(f"the number of ranks must be at least 1, got {world_size}")
    if config.global_batch_size % world_size:
        raise ConfigError(f"'global_batch_size' ({config.global_batch_size}) must be divisible by the number of "
                          f"ranks ({world_size}); use a multiple of {world_size}")
    if config.data.micro_batch_size == 0 and config.batch_warmup.start:
        raise ConfigError("batch_warmup needs data.micro_batch_size > 0: steps of different sizes are made of "
                          "whole micro-batches")
    micro = config.micro_batch_rows(world_size)
    step = world_size * micro
    warmup_start = config.batch_warmup.start
    for key, rows in (("global_batch_size", config.global_batch_size), ("batch_warmup.start", warmup_start)):
        if rows % step:
            raise ConfigError(f"'{key}' ({rows}) must be a multiple of ranks x data.micro_batch_size "
                              f"({world_size} x {micro} = {step}); use {max(step, rows // step * step)} or change "
                              f"data.micro_batch_size")
    if config.batch_warmup.start > config.global_batch_size:
        raise ConfigError(f"'batch_warmup.start' ({config.batch_warmup.start}) is larger than 'global_batch_size' "
                          f"({config.global_batch_size}); the warmup grows the batch towards it")


def check_save_folder(config: TrainConfig) -> None:
    """A save_folder in an object store: its bucket is there and the credentials may use it."""
    if is_remote(config.save_folder):
        RemoteFolder(config.save_folder).check("save_folder")


def check_lengths(config: TrainConfig) -> None:
    """Rows longer than the model is meant for would train, and export a config that says otherwise."""
    if config.data.max_seq_len > config.model.max_position_embeddings:
        raise ConfigError(f"data.max_seq_len ({config.data.max_seq_len}) is above model.max_position_embeddings "
                          f"({config.model.max_position_embeddings}); set model.max_position_embeddings="
                          f"{config.data.max_seq_len} or shorten the rows")


def check_data_paths(config: TrainConfig) -> None:
    """Every stream is a prepared dataset with all its shards whole, made with ``data.tokenizer``; a remote one is
    checked in its store (bucket, credentials, index, shard sizes) before anything trains."""
    fingerprint, largest = None, 0
    for name, stream in config.data.streams.items():
        if stream.remote is None and not (Path(stream.local) / "index.json").is_file():
            raise ConfigError(f"data.streams.{name}.local '{stream.local}' holds no prepared dataset (no index.json); "
                              f"run `bertforge prep` for it or fix the path")
        fingerprint = fingerprint or tokenizer_fingerprint(config.data.tokenizer)
        index = check_prepared_stream(name, stream.local, config.data.tokenizer, fingerprint, remote=stream.remote)
        largest = max([largest, *(sum(s[p]["bytes"] for p in ("raw_data", "zip_data") if s.get(p))
                                  for s in index["shards"])])
    if config.data.cache_limit is not None:
        from streaming.base.util import bytes_to_int  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)

        if bytes_to_int(config.data.cache_limit) < 4 * largest:
            raise ConfigError(f"data.cache_limit {config.data.cache_limit} is below four times the largest shard "
                              f"(raw and compressed: {largest:,} bytes), the least streaming can work in; raise it "
                              f"to at least {-(-4 * largest // 1024)}kb, or leave it unset")


def check_eval_streams(config: TrainConfig) -> None:
    """Every held-out dataset of an ``eval:`` block exists, holds documents, and was made with the tokenizer."""
    if not config.eval.interval:
        return

    fingerprint = tokenizer_fingerprint(config.data.tokenizer)
    for name, path in config.eval_streams().items():
        local, remote = stream_location(path, config.data.cache_dir)
        if remote is None and not (Path(local) / "index.json").is_file():
            raise ConfigError(f"eval stream '{name}': {local} holds no prepared dataset (no index.json); prepare the "
                              f"data with a holdout (`holdout: {{fraction: 0.005}}` in the recipe), or set "
                              f"eval.streams.{name} to a prepared dataset")
        index = check_prepared_stream(f"eval.{name}", local, config.data.tokenizer, fingerprint, remote=remote)
        if not sum(shard["samples"] for shard in index["shards"]):
            raise ConfigError(f"eval stream '{name}': {path} holds no documents; raise the recipe's "
                              f"holdout.fraction, or set eval.streams.{name} to another dataset")


def check_tokenizer_fits(config: TrainConfig) -> None:
    """The tokenizer must fit the model and agree on special ids, or training learns garbage; fail up front."""
    size, ids = tokenizer_size_and_specials(config.data.tokenizer)
    if size > config.model.vocab_size:
        raise ConfigError(f"tokenizer '{config.data.tokenizer}' has {size} tokens but model.vocab_size is "
                          f"{config.model.vocab_size}; set model.vocab_size={-(-size // 64) * 64}")
    for name in ("cls", "sep", "pad", "mask"):
        if getattr(ids, name) != getattr(config.model, f"{name}_token_id"):
            raise ConfigError(f"model.{name}_token_id is {getattr(config.model, f'{name}_token_id')} but the "
                              f"tokenizer's [{name.upper()}] is {getattr(ids, name)}; set "
                              f"model.{name}_token_id={getattr(ids, name)}")


def check_schedule(config: TrainConfig) -> None:
    if config.total_tokens is None and config.schedule.decays:
        raise ConfigError(f"a decaying schedule needs max_duration in tokens (e.g. '1000000tok'), got "
                          f"{config.max_duration!r}")


def check_device(config: TrainConfig, device: Literal["cpu", "gpu"]) -> None:
    if config.parallelism == "fsdp2" and config.optimizer.name == "stableadamw" and device == "cpu":
        raise ConfigError("optimizer 'stableadamw' under parallelism 'fsdp2' needs an AVG all-reduce of each sharded "
                          "parameter's update RMS, which the CPU (gloo) backend lacks; on CPU use "
                          "optimizer.name=adamw with fsdp2, or parallelism=ddp")


def check_init_from(config: TrainConfig) -> None:
    """The weights a run starts from are there (else the run would fail after building its data and model, on a
    bare "No such file or directory")."""
    if config.init_from and not is_remote(config.init_from) and not Path(config.init_from).exists():
        raise ConfigError(f"init_from '{config.init_from}' does not exist; give a HuggingFace ModernBERT directory "
                          f"or a research-repository checkpoint (.pt)")


def check_probe_tasks(config: TrainConfig) -> None:
    """The tasks of ``eval.probe.tasks`` load, their files are there (a retrieval task's BEIR folder), and the probe
    can score them: a run should not train for a day and then fail at its first evaluation."""
    for target in config.eval.probe.tasks:
        tasks = load_suite(target)
        check_tasks([task for task in tasks if task.kind == "retrieval"])
        for task in tasks:
            if task.kind == "classification" and task.head.problem_type == "multi_label_classification":
                raise ConfigError(f"eval.probe.tasks: {task.source} is a multi-label task, and the probe takes "
                                  f"single-label classification, regression and retrieval tasks; leave it out of "
                                  f"eval.probe.tasks (fine-tune it after the run with `downstream:`)")
            if task.kind == "classification":
                for split in (task.data.train_split, task.data.eval_splits[0]):
                    if task.data.files and not task.file(split).is_file():
                        raise ConfigError(f"eval.probe.tasks: {task.source}: data.files.{split} is "
                                          f"{task.file(split)}, which does not exist; make the task's files first "
                                          f"(its YAML's header says how)")
