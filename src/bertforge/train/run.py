"""`bertforge train`: a run config in, a trained (and exported) model out, as a short sequence of named steps.

    check  -> preflight: everything that can be refused before a process group or a model exists
    lock   -> one run per save folder (folder_lock.py); the checkpoint to resume from, verified
    data   -> the packed MLM loader, grouped into optimizer steps
    model  -> ModernBERT, its initial weights, and what it loads (a predecessor phase, a checkpoint)
    parallelize -> DDP or FSDP2 (the units: model/parallelize.py)
    callbacks -> LR from tokens, divergence guard, run state, metrics, stop-on-signal, verified checkpoints
    trainer -> Composer's Trainer over all of it, writing into the run folder (checkpoint/run_folder.py)
    fit, finish -> train, then stop (diverged, or for a requeue) or export
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from composer import Trainer
from composer.devices import DeviceCPU, DeviceGPU
from composer.utils import FSDP2Config, dist, reproducibility
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from bertforge.checkpoint.research import carry_optimizer_state, optimizer_moments, read_research_checkpoint
from bertforge.checkpoint.run_folder import CHECKPOINT_FILENAME, LATEST_FILENAME, RunFolder, open_run_folder
from bertforge.checkpoint.safe_load import check_checkpoint
from bertforge.data.loader import PackedMLMLoader
from bertforge.errors import CheckpointError, ConfigError, StoppedBySignal, TrainingDiverged
from bertforge.export.folder import export_model
from bertforge.failures import disk_full
from bertforge.folder_lock import acquire_lock, release_lock
from bertforge.model import ModernBertForMaskedLM
from bertforge.model.hf_io import load_state_dict_checked, read_state_dict
from bertforge.model.parallelize import checkpoint_layer_activations, mark_fsdp2_units
from bertforge.model.tiling import tile_state_dict
from bertforge.train.callbacks.divergence_guard import DivergenceGuard
from bertforge.train.callbacks.gloo_gradient_average import gloo_gradient_fix
from bertforge.train.callbacks.metrics_file import MetricsFile
from bertforge.train.callbacks.mlm_eval import MLMEval
from bertforge.train.callbacks.probe_eval import ProbeEval
from bertforge.train.callbacks.run_state import RunState
from bertforge.train.callbacks.stop_on_signal import StopOnSignal
from bertforge.train.callbacks.token_lr import TokenScheduler
from bertforge.train.callbacks.verified_checkpoint_saver import VerifiedCheckpointSaver
from bertforge.train.composer_model import MLMComposerModel
from bertforge.train.config import TrainConfig, parse_time
from bertforge.train.launcher import adopt_launcher_environment, launcher_world_size
from bertforge.train.optim import build_optimizer
from bertforge.train.phases import starting_point
from bertforge.train.precision import cpu_bf16_units, describe_precision, resolve_precision
from bertforge.train.preflight import check_device
from bertforge.train.resume_check import check_restart, record_run
from bertforge.train.steps import StepBatches, dataspec
from bertforge.train.wandb_logging import build_wandb_logger

T = TypeVar("T")


def build_data(config: TrainConfig, world_size: int):
    """The loader and its grouping into steps of the (warming-up) global batch."""
    loader = PackedMLMLoader(config.data, micro_batch_rows=config.micro_batch_rows(world_size),
                             vocab_size=config.model.vocab_size)
    return loader, StepBatches(loader, config.global_batch_size, config.batch_warmup, world_size)


def build_model(config: TrainConfig):
    """A freshly initialised model, with ``init_from``'s weights when given, and the optimizer moments to start
    from (``init_optimizer``), if any."""
    model = ModernBertForMaskedLM(config.model)
    moments = load_initial_weights(model, config) if config.init_from else None
    return model, moments


def load_initial_weights(model, config: TrainConfig):
    """``init_from``: a HuggingFace directory's weights (tiled into the model's shapes when it holds a smaller
    one), or a research-repository Composer checkpoint's (a .pt file). Returns that checkpoint's optimizer moments
    when ``init_optimizer`` asks for them and they fit (else None, saying why)."""
    source = Path(config.init_from)
    if source.is_file():
        if config.init_tile:
            raise ConfigError(f"init_tile needs init_from to be a HuggingFace directory, got the file {source}; "
                              f"export it first (`bertforge export {source} DIR --model PRESET`)")
        imported, state = read_research_checkpoint(source, config.model)
        load_state_dict_checked(model, imported.state_dict(), source=config.init_from)
        moments, note = None, None
        if not config.init_optimizer:
            if state.get("optimizers"):
                note = (f"{source} holds optimizer state ({', '.join(state['optimizers'])}); not carried over "
                        f"(init_optimizer: false): the optimizer starts fresh")
        else:
            try:
                moments = optimizer_moments(state, {n: p.shape for n, p in model.named_parameters()},
                                            source=str(source))
                note = (f"init_optimizer: {moments.optimizer}'s moments and step count ({moments.step}) carried "
                        f"over from {source}")
            except CheckpointError as err:
                note = f"init_optimizer: {err}; the optimizer starts fresh"
        if note and dist.get_global_rank() == 0:
            print(note, flush=True)
        return moments
    weights = read_state_dict(source)
    if config.init_tile:
        small_layers = json.loads((source / "config.json").read_text())["num_hidden_layers"]
        weights = tile_state_dict(weights, small_layers, model.state_dict(), config.model.num_hidden_layers,
                                  source=config.init_from)
    load_state_dict_checked(model, weights, source=config.init_from)
    return None


def parallelize(model, config: TrainConfig) -> dict | None:
    """Prepare ``model`` for ``config.parallelism``; returns Composer's ``parallelism_config`` (None: DDP, which
    Composer applies by itself when there are several ranks)."""
    if config.parallelism == "fsdp2":
        mark_fsdp2_units(model)
        return {"fsdp": FSDP2Config(state_dict_type=config.checkpoint.state_dict_type,
                                    activation_checkpointing=config.activation_checkpointing)}
    if config.activation_checkpointing:
        checkpoint_layer_activations(model)
    return None


def build_callbacks(config: TrainConfig, folder: RunFolder, loader, steps, lineage: dict, world_size: int,
                    stopper, guard, precision: str) -> list:
    """In the order they run at each event: the gradient fix before the guard measures gradients, the guard
    before the LR is set (a rollback moves the token clock), the checkpoint saver last."""
    saver = VerifiedCheckpointSaver(
        folder=str(folder.path), filename=CHECKPOINT_FILENAME, remote_file_name=None,
        latest_filename=LATEST_FILENAME, latest_remote_file_name=None, save_interval=config.checkpoint.interval,
        overwrite=not config.checkpoint.autoresume, num_checkpoints_to_keep=config.checkpoint.keep, guard=guard,
        run_folder=folder)
    return [*gloo_gradient_fix(config.parallelism, world_size), stopper, guard,
            TokenScheduler(config.schedule, config.total_tokens or 0, config.optimizer.lr,
                           lr_scale=lambda: guard.lr_scale),
            RunState(loader, steps, config, lineage),
            # The evals before MetricsFile, whose fit_end draws curves.png: the final ones are then on it.
            *([MLMEval(config, folder, precision)] if config.eval.interval else []),
            *([ProbeEval(config, folder, precision)] if config.eval.probe.tasks else []),
            MetricsFile(folder, config.model, config.data.mask_rate, config.peak_flops, config.log_interval,
                        config.total_tokens),
            saver]


def build_trainer(config: TrainConfig, folder: RunFolder, model, steps, callbacks: list, parallelism, start,
                  device, micro_rows: int, precision: str):
    """Composer's Trainer. bf16 on a CPU is our own autocast (train/precision.py): Composer refuses amp_bf16 there,
    so it is told fp32 and the model's forward pass casts."""
    loggers = [build_wandb_logger(config, folder, dist.get_global_rank() == 0, start.lineage)] \
        if config.wandb.enabled else []
    cpu_bf16 = device.name == "cpu" and precision == "amp_bf16"
    return Trainer(
        model=MLMComposerModel(model, cpu_bf16=cpu_bf16), train_dataloader=dataspec(steps),
        max_duration=config.max_duration, optimizers=build_optimizer(model, config.optimizer),
        device=device, precision="fp32" if cpu_bf16 else precision, device_train_microbatch_size=micro_rows,
        accumulate_train_batch_on_tokens=True,
        # Checkpoints are saved by the VerifiedCheckpointSaver among the callbacks, and resumed by bertforge
        # itself (RunFolder.resume_point): Composer's autoresume trusts the latest link and, on a folder that
        # several nodes share, its per-node signal files collide.
        autoresume=False, load_path=start.load_path, load_weights_only=start.weights_only,
        load_ignore_keys=start.ignore_keys, run_name=config.run_name, seed=config.seed,
        parallelism_config=parallelism, loggers=loggers, callbacks=callbacks, spin_dataloaders=False,
        progress_bar=False, log_to_console=False,
        compile_config={} if config.compiled_on(device.name) else None,
    )


def _reached(max_duration: str, timestamp) -> bool:
    """Whether the run's configured length is done (``state.max_duration`` cannot tell: Composer's stop_training
    sets it to the batch it stopped at)."""
    count, unit = parse_time(max_duration, "max_duration")
    return int(getattr(timestamp, {"tok": "token", "ba": "batch", "ep": "epoch", "sp": "sample"}[unit])) >= count


def _on_rank_zero(work: Callable[[], T]) -> T:
    """Run ``work`` on rank 0 alone (it touches the shared save folder) and give every rank its result, or its
    error, so that all ranks go on or stop together."""
    box: list = [None]
    if dist.get_global_rank() == 0:
        try:
            box[0] = (True, work())
        except (ConfigError, CheckpointError, FileNotFoundError) as err:
            box[0] = (False, err)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _checked_starting_point(config: TrainConfig, folder: RunFolder):
    """Where the run starts (its own newest verified checkpoint, a predecessor's, ``load_path``, or fresh), with
    the checkpoint checked to hold nothing that could run code when Composer unpickles it."""
    if config.checkpoint.autoresume:
        folder.pull()  # a save_folder in an object store: its newest complete checkpoint, into the staging folder
    resume = folder.resume_point() if config.checkpoint.autoresume else None
    start = starting_point(config, resume)
    if resume is not None:
        print(f"resuming from {resume}", flush=True)
        changes = check_restart(config, folder, resume)
        if changes:
            start.lineage["config_changes"] = changes
    else:
        folder.set_aside_metrics()
        record_run(config, folder)
    if start.load_path:
        check_checkpoint(Path(start.load_path))
    return start


def train(config: TrainConfig) -> Path:
    """Run ``config`` to its end; returns the save folder. Raises StoppedBySignal when a signal stopped it (with a
    checkpoint to resume from) and TrainingDiverged when its divergence guard did. The config has passed the
    preflight (finetune.downstream.train_with_downstream runs it before torch is imported); the device, known only
    now, is checked here."""
    adopt_launcher_environment()
    world = launcher_world_size()
    check_device(config, "gpu" if torch.cuda.is_available() else "cpu")
    device = DeviceGPU() if torch.cuda.is_available() else DeviceCPU()
    dist.initialize_dist(device)
    reproducibility.seed_all(config.seed)
    folder = open_run_folder(config.save_folder, config.staging_folder)
    _on_rank_zero(lambda: acquire_lock(folder.lock, "bertforge train"))
    try:
        return _run(config, folder, world, device)
    finally:
        if dist.get_global_rank() == 0:
            release_lock(folder.lock)


def _run(config: TrainConfig, folder: RunFolder, world: int, device) -> Path:
    start = _on_rank_zero(lambda: _checked_starting_point(config, folder))
    loader, steps = build_data(config, world)
    model, moments = build_model(config)
    parallelism = parallelize(model, config)
    stopper, guard = StopOnSignal(), DivergenceGuard(config.stability, folder)
    bf16_units = cpu_bf16_units() if device.name == "cpu" else None
    precision = resolve_precision(config.precision, device.name, bf16_units)
    if dist.get_global_rank() == 0:
        print(describe_precision(precision, device.name, bf16_units), flush=True)
    callbacks = build_callbacks(config, folder, loader, steps, start.lineage, world, stopper, guard, precision)
    trainer = build_trainer(config, folder, model, steps, callbacks, parallelism, start, device,
                            config.micro_batch_rows(world), precision)
    if moments is not None and start.load_path is None:  # a restart has the optimizer in its own checkpoint
        carry_optimizer_state(trainer.state.model, trainer.state.optimizers[0], "model", moments)
    state = trainer.state
    if _reached(config.max_duration, state.timestamp):
        # A rerun of a finished run (a requeued job, a second quickstart): nothing to train, and Composer's fit()
        # would refuse with a traceback. The export below is written again, so a lost one comes back.
        if dist.get_global_rank() == 0:
            print(f"{config.run_name}: already finished at {int(state.timestamp.token):,} tokens (max_duration "
                  f"{config.max_duration}); nothing to train. To train further, raise max_duration, or start a "
                  f"new phase from its final checkpoint (phase.after: {folder.config})", flush=True)
    else:
        try:
            trainer.fit()
        except (OSError, RuntimeError) as err:
            if disk_full(err):  # name the folder: torch's own words for it ("unexpected pos") do not
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder.path)) from err
            raise
        finally:
            if dist.get_global_rank() == 0:
                folder.push_files()
    if guard.stop_reason is not None:
        trainer.close()
        raise TrainingDiverged(guard.stop_reason)
    if stopper.stopped_at_batch is not None and not _reached(config.max_duration, state.timestamp):
        trainer.close()
        raise StoppedBySignal(f"stopped by {stopper.received.name} after batch {stopper.stopped_at_batch}, with a "
                              f"checkpoint in {folder.location}; the same command resumes the run")
    if config.export_dir:  # under DDP Composer's model sits inside DistributedDataParallel (.module)
        export_final_model(config, getattr(state.model, "module", state.model).model)
    trainer.close()
    return folder.path


def export_final_model(config: TrainConfig, model) -> None:
    """``export_dir``: the trained model written once, by rank 0. Under FSDP2 every rank first takes part in
    gathering the full weights (each holds a shard), which rank 0 loads into a plain model to export."""
    if config.parallelism == "fsdp2":
        weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_global_rank() == 0:
            model = ModernBertForMaskedLM(config.model, init=False)
            load_state_dict_checked(model, weights, source="the trained model")
    if dist.get_global_rank() == 0:
        export_model(model, config.export_dir, tokenizer=config.data.tokenizer, max_length=config.data.max_seq_len)
    dist.barrier()
