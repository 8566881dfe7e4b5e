"""`bertforge train`: build the model, the packed loader and a Composer Trainer from a TrainConfig, and fit."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from bertforge.schema import ConfigError
from bertforge.train.config import TrainConfig, resolved_yaml


def check_tokenizer_fits(config: TrainConfig) -> None:
    """The tokenizer must fit the model and agree on special ids, or training learns garbage; fail up front."""
    from bertforge.data.tokenizer import load_tokenizer, special_ids

    tokenizer = load_tokenizer(config.data.tokenizer)
    if len(tokenizer) > config.model.vocab_size:
        raise ConfigError(f"tokenizer '{config.data.tokenizer}' has {len(tokenizer)} tokens but model.vocab_size is "
                          f"{config.model.vocab_size}; set model.vocab_size={-(-len(tokenizer) // 64) * 64}")
    ids = special_ids(tokenizer)
    for name in ("cls", "sep", "pad", "mask"):
        if getattr(ids, name) != getattr(config.model, f"{name}_token_id"):
            raise ConfigError(f"model.{name}_token_id is {getattr(config.model, f'{name}_token_id')} but the "
                              f"tokenizer's [{name.upper()}] is {getattr(ids, name)}; set "
                              f"model.{name}_token_id={getattr(ids, name)}")


def check_data_paths(config: TrainConfig) -> None:
    for name, stream in config.data.streams.items():
        if stream.remote is None and not (Path(stream.local) / "index.json").is_file():
            raise ConfigError(f"data.streams.{name}.local '{stream.local}' holds no prepared dataset (no index.json); "
                              f"run `bertforge prep` for it or fix the path")


_CHECKPOINT_NAME = re.compile(r"^ep\d+-ba(\d+)")


def set_aside_unfinished_checkpoints(save_folder: Path) -> list[Path]:
    """Move checkpoints newer than ``latest-rank0.pt`` into ``incomplete/`` before autoresume.

    Composer writes a checkpoint file in place and re-points ``latest`` only once it is complete, so a run killed
    in between leaves a newer, possibly partial file that would block the resumed run. It is kept, not deleted.
    """
    latest = save_folder / "latest-rank0.pt"
    if not save_folder.is_dir():
        return []
    resumed_batch = -1
    if latest.is_symlink() or latest.exists():
        match = _CHECKPOINT_NAME.match(Path(os.readlink(latest)).name if latest.is_symlink() else "")
        resumed_batch = int(match.group(1)) if match else -1
    moved = []
    for path in sorted(save_folder.iterdir()):
        match = _CHECKPOINT_NAME.match(path.name)
        if match and int(match.group(1)) > resumed_batch:
            (save_folder / "incomplete").mkdir(exist_ok=True)
            target = save_folder / "incomplete" / path.name
            path.rename(target)
            moved.append(target)
    return moved


def load_initial_weights(model, config: TrainConfig) -> None:
    """``init_from``: a HuggingFace directory's weights, tiled into the model's shapes when it holds a smaller one."""
    from bertforge.model.hf_io import load_state_dict_checked, read_state_dict

    weights = read_state_dict(Path(config.init_from))
    if config.init_tile:
        import json

        from bertforge.model.tiling import tile_state_dict

        small_layers = json.loads((Path(config.init_from) / "config.json").read_text())["num_hidden_layers"]
        weights = tile_state_dict(weights, small_layers, model.state_dict(), config.model.num_hidden_layers,
                                  source=config.init_from)
    load_state_dict_checked(model, weights, source=config.init_from)


def adopt_launcher_environment(env=os.environ) -> None:
    """Give Composer the variables it reads (RANK, LOCAL_RANK, NODE_RANK, ...) under the names launchers use.

    Composer's own launcher sets them all. torchrun calls the node's rank GROUP_RANK. Under Slurm, srun itself is
    the launcher, one task per rank: the batch script exports the rendezvous (MASTER_ADDR, MASTER_PORT,
    WORLD_SIZE, LOCAL_WORLD_SIZE) and each task's own ranks come from SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID.
    """
    if "NODE_RANK" not in env and "GROUP_RANK" in env:
        env["NODE_RANK"] = env["GROUP_RANK"]
    if "RANK" not in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        if env.get("WORLD_SIZE") != env.get("SLURM_NTASKS"):
            raise ConfigError(f"Slurm started {env.get('SLURM_NTASKS')} tasks but WORLD_SIZE is "
                              f"{env.get('WORLD_SIZE')}; launch one task per rank (srun --ntasks-per-node=RANKS, "
                              f"as the script of `bertforge slurm` does)")
        env.update(RANK=env["SLURM_PROCID"], LOCAL_RANK=env["SLURM_LOCALID"], NODE_RANK=env["SLURM_NODEID"])


def train(config: TrainConfig) -> Path:
    import torch
    from composer import Time, Trainer
    from composer.devices import DeviceCPU, DeviceGPU
    from composer.utils import dist, reproducibility

    from bertforge.data.loader import PackedMLMLoader
    from bertforge.model import ModernBertForMaskedLM
    from bertforge.model.layers import EncoderLayer
    from bertforge.train.callbacks import GlooFsdpGradientAverage, MetricsFile, RunState
    from bertforge.train.composer_model import MLMComposerModel
    from bertforge.train.optim import build_optimizer
    from bertforge.train.phases import FRESH_STATE_KEYS, start_after_predecessor
    from bertforge.train.preemption import StopOnSignal, StoppedBySignal
    from bertforge.train.schedules import TokenScheduler
    from bertforge.train.steps import StepBatches, dataspec
    from bertforge.train.wandb_logging import build_wandb_logger

    adopt_launcher_environment()
    stopper = StopOnSignal()
    world = dist.get_world_size()
    config.check_world(world)
    check_data_paths(config)
    check_tokenizer_fits(config)
    total = config.total_tokens
    if total is None and (config.schedule.decay_tokens or config.schedule.name == "cosine"):
        raise ConfigError("a decaying schedule needs max_duration in tokens (e.g. '1000000tok')")

    if config.parallelism == "fsdp2" and config.optimizer.name == "stableadamw" and not torch.cuda.is_available():
        raise ConfigError("optimizer 'stableadamw' under parallelism 'fsdp2' needs an AVG all-reduce of each sharded "
                          "parameter's update RMS, which the CPU (gloo) backend lacks; on CPU use "
                          "optimizer.name=adamw with fsdp2, or parallelism=ddp")
    device = DeviceGPU() if torch.cuda.is_available() else DeviceCPU()
    dist.initialize_dist(device)
    reproducibility.seed_all(config.seed)
    micro_rows = config.micro_batch_rows(world)
    data = dataclasses.replace(config.data, micro_batch_size=micro_rows)
    loader = PackedMLMLoader(data, vocab_size=config.model.vocab_size)
    steps = StepBatches(loader, config.global_batch_size, config.batch_warmup, world)
    model = ModernBertForMaskedLM(config.model)
    if config.init_from:
        load_initial_weights(model, config)
    lineage = start_after_predecessor(config) | ({"init_from": config.init_from} if config.init_from else {})
    save_folder = Path(config.save_folder)

    precision = config.precision if config.precision != "auto" else ("amp_bf16" if device.name == "gpu" else "fp32")
    parallelism = None

    def is_layer(module) -> bool:
        return isinstance(module, EncoderLayer)

    if config.parallelism == "fsdp2":
        from composer.utils import FSDP2Config

        # Composer shards each encoder layer, then the whole model (which keeps the tied embedding and decoder
        # together), and recomputes the layers' activations when asked.
        model.fsdp_wrap_fn = model.activation_checkpointing_fn = is_layer
        parallelism = {"fsdp": FSDP2Config(state_dict_type=config.checkpoint.state_dict_type,
                                           activation_checkpointing=config.activation_checkpointing)}
    elif config.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(model, check_fn=is_layer)
    callbacks = [stopper, TokenScheduler(config.schedule, total or 0, config.optimizer.lr),
                 RunState(loader, steps, config, lineage),
                 MetricsFile(save_folder / "metrics.jsonl", config.model, data.mask_rate, config.peak_flops,
                             config.log_interval, total)]
    if config.parallelism == "fsdp2" and world > 1 and torch.distributed.get_backend() == "gloo":
        callbacks.insert(0, GlooFsdpGradientAverage(world))
    if config.checkpoint.autoresume and dist.get_local_rank() == 0:
        for path in set_aside_unfinished_checkpoints(save_folder):
            print(f"moved {path.name}, newer than the last complete checkpoint, to {path.parent}", flush=True)
    loggers = [build_wandb_logger(config, save_folder, dist.get_global_rank() == 0, lineage)] \
        if config.wandb.enabled else []
    trainer = Trainer(
        model=MLMComposerModel(model), train_dataloader=dataspec(steps), max_duration=config.max_duration,
        optimizers=build_optimizer(model, config.optimizer),
        device=device, precision=precision, device_train_microbatch_size=micro_rows,
        accumulate_train_batch_on_tokens=True,
        save_folder=str(save_folder), save_interval=config.checkpoint.interval,
        save_num_checkpoints_to_keep=config.checkpoint.keep, save_overwrite=not config.checkpoint.autoresume,
        autoresume=config.checkpoint.autoresume, load_path=config.checkpoint.load_path,
        load_weights_only=config.checkpoint.load_weights_only,
        load_ignore_keys=FRESH_STATE_KEYS if config.phase.after and config.phase.load != "weights" else None,
        run_name=config.run_name, seed=config.seed,
        parallelism_config=parallelism, loggers=loggers, callbacks=callbacks, spin_dataloaders=False,
        progress_bar=False, log_to_console=False,
        compile_config={} if config.compile else None,
    )
    if dist.get_global_rank() == 0:
        save_folder.mkdir(parents=True, exist_ok=True)
        from bertforge.atomic import write_text_atomic

        write_text_atomic(save_folder / "config.yaml", resolved_yaml(config))
    trainer.fit()
    unit_total = Time.from_input(config.max_duration)
    if stopper.stopped_at_batch is not None and trainer.state.timestamp.get(unit_total.unit) < unit_total:
        trainer.close()
        raise StoppedBySignal(f"stopped by {stopper.received.name} after batch {stopper.stopped_at_batch}, with a "
                              f"checkpoint in {save_folder}; the same command resumes the run")
    if config.export_dir:
        from bertforge.train.export import export_model

        export_model(trainer.state.model.model, config.export_dir, tokenizer=config.data.tokenizer)
    trainer.close()
    return save_folder
