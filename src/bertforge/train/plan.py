"""`bertforge plan`: what a phase (or a chain of phases) will do, without training: tokens, steps, the batch through
its warmup, the LR at each milestone, the checkpoints, and the time at a given throughput.

It uses the trainer's own rules (the schedule's ``lr_at``, which the LR callback calls, and the step grouping's
``step_rows``), so the plan and the run cannot disagree. Steps assume full rows (packing is above 99.9% full),
which is what the batch-size warmup counts too. Warmup steps are walked one by one (a few tens of thousands at
most), the stable rest is arithmetic, so a 2-trillion-token plan takes milliseconds.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bertforge.atomic import atomic_path
from bertforge.checkpoint.run_folder import open_run_folder, read_metric_records
from bertforge.data.mixture import stream_shares
from bertforge.errors import ConfigError, DataError
from bertforge.train.config import TrainConfig, parse_time
from bertforge.train.preflight import preflight
from bertforge.train.schedules import lr_at
from bertforge.train.steps import step_rows


@dataclass
class Milestone:
    name: str
    tokens: int
    """Tokens into this phase."""
    step: int
    """Steps finished when the phase reaches these tokens."""
    lr: float
    global_batch_rows: int


@dataclass
class PhasePlan:
    run_name: str
    config: str
    tokens: int
    tokens_before: int
    """Tokens of the earlier phases of the chain."""
    steps: int
    max_seq_len: int
    global_batch_rows: int
    micro_batches_per_step: int
    checkpoints: int
    checkpoint_folder: str
    starts_from: str
    tokens_per_s: float | None
    hours: float | None
    milestones: list[Milestone] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    """Steps after which the held-out eval runs (0: before the first), empty without an eval block."""
    eval_interval: str = ""
    mask_rate: float = 0.0
    mixture: list[dict] = field(default_factory=list)
    """Per stream: its share of the phase's tokens, those tokens, and how many passes over its data they are;
    empty when the streams are not prepared yet (``mixture_note`` says why)."""
    mixture_note: str = ""


def _tokens(config) -> int:
    if config.total_tokens is None:
        raise ConfigError(f"plan needs max_duration in tokens (e.g. '1719000000000tok'), got {config.max_duration!r}")
    return config.total_tokens


class StepClock:
    """Tokens after each step of a phase: walked step by step through the batch warmup, then arithmetic."""

    def __init__(self, config, ranks: int):
        self.seq = config.data.max_seq_len
        self.target = config.global_batch_size
        self.warmup = config.batch_warmup
        self.per_micro = ranks * config.micro_batch_rows(ranks)
        self.boundaries = [0]  # tokens after step k, through the warmup
        while self.warmup.start and self.boundaries[-1] < self.warmup.tokens:
            self.boundaries.append(self.boundaries[-1] + self.rows(self.boundaries[-1]) * self.seq)

    def rows(self, tokens: int) -> int:
        return step_rows(tokens, self.warmup, self.target, self.per_micro)

    def steps_to(self, tokens: int) -> int:
        """Steps finished once ``tokens`` are reached (the step that crosses them included)."""
        if tokens <= self.boundaries[-1]:
            return next(k for k, t in enumerate(self.boundaries) if t >= tokens)
        after = tokens - self.boundaries[-1]
        return len(self.boundaries) - 1 + math.ceil(after / (self.target * self.seq))


def measured_tokens_per_s(save_folder: str, staging_folder: str | None = None) -> float | None:
    """The median wall-clock tokens/s of the last logged steps of an earlier run in this folder (its staging copy,
    for one in an object store), if any."""
    metrics = open_run_folder(save_folder, staging_folder).metrics
    if not metrics.is_file():
        return None
    rows = read_metric_records(metrics)
    rates = [r["tokens_per_s"] for r in rows[-20:] if r.get("tokens_per_s")]
    return statistics.median(rates) if rates else None


def _checkpoints(interval: str, steps: int, tokens: int) -> int:
    every, unit = parse_time(interval, "checkpoint.interval")
    done = {"ba": steps, "tok": tokens}.get(unit)
    if done is None:  # epochs or samples: only the checkpoint at the end can be counted ahead
        return 1
    return done // every + (0 if done % every == 0 else 1)  # and one at the end


def _eval_steps(config, clock: StepClock, steps: int, total: int) -> list[int]:
    """The steps the eval callback evaluates at: the start, every interval, and the end."""
    if not config.eval.interval:
        return []
    every, unit = parse_time(config.eval.interval, "eval.interval")
    if unit == "ba":
        points = range(every, steps + 1, every)
    else:
        points = (clock.steps_to(tokens) for tokens in range(every, total + 1, every))
    return sorted({0, *points, steps})


def _starting_point(config) -> str:
    if config.phase.after:
        taken = "weights and optimizer" if config.phase.load == "weights_and_optimizer" else "weights"
        return f"{taken} of {config.phase.after}"
    if config.init_from and config.init_optimizer:
        return f"weights and optimizer of {config.init_from}"
    return config.init_from or config.checkpoint.load_path or "a fresh initialisation"


def plan_phase(path: Path, config: TrainConfig, ranks: int, tokens_before: int,
               tokens_per_s: float | None) -> PhasePlan:
    preflight(config, ranks, device=None, files=False)
    total = _tokens(config)
    clock = StepClock(config, ranks)
    points = {"start": 0, "end": total}
    if config.schedule.warmup_tokens:
        points["lr warmup done"] = config.schedule.warmup_tokens
    if config.batch_warmup.start:
        points["batch warmup done"] = config.batch_warmup.tokens
    if config.schedule.name == "wsd" and config.schedule.decay_tokens:
        points["decay starts"] = total - config.schedule.decay_tokens
    peak = config.optimizer.lr
    milestones = [Milestone(name, tokens, clock.steps_to(tokens), lr_at(config.schedule, peak, tokens, total),
                            clock.rows(tokens))
                  for name, tokens in sorted(points.items(), key=lambda item: item[1]) if tokens <= total]
    steps = clock.steps_to(total)
    rate = tokens_per_s or measured_tokens_per_s(config.save_folder, config.staging_folder)
    return PhasePlan(
        run_name=config.run_name, config=str(path), tokens=total, tokens_before=tokens_before, steps=steps,
        max_seq_len=config.data.max_seq_len, global_batch_rows=config.global_batch_size,
        micro_batches_per_step=config.global_batch_size // clock.per_micro,
        checkpoints=_checkpoints(config.checkpoint.interval, steps, total), checkpoint_folder=config.save_folder,
        starts_from=_starting_point(config), tokens_per_s=rate, hours=total / rate / 3600 if rate else None,
        milestones=milestones, eval_steps=_eval_steps(config, clock, steps, total),
        eval_interval=config.eval.interval or "", mask_rate=config.data.mask_rate,
        **_mixture(config, total))


def _mixture(config: TrainConfig, total: int) -> dict:
    """The phase's tokens per stream, from the prepared streams' stats.json; a plan made before the data is
    prepared says how the mixture is given instead."""
    data = config.data
    how = (f"by temperature {data.temperature:g}" if data.temperature is not None else
           "by proportion (of samples)" if any(s.proportion is not None for s in data.streams.values()) else
           "by size")
    try:
        shares = stream_shares(data)
    except (DataError, ConfigError, OSError):  # not prepared yet: a plan often comes first
        given = ", ".join(f"{name} {s.proportion:g}" for name, s in data.streams.items() if s.proportion is not None)
        return {"mixture": [], "mixture_note": f"{how}{': ' + given if given else ''} (tokens per stream once the "
                                               f"streams are prepared)"}
    rows = [{"stream": s.name, "token_share": s.token_share, "tokens": round(s.token_share * total),
             "sample_proportion": s.sample_proportion, "dataset_tokens": s.tokens,
             "epochs": s.token_share * total / s.tokens} for s in shares]
    return {"mixture": rows, "mixture_note": how}


def plan_chain(chain: list[tuple[Path, object]], ranks: int, tokens_per_s: float | None = None) -> list[PhasePlan]:
    """Plans of a chain of phases (``phases.load_chain``), first phase first."""
    plans, before = [], 0
    for phase_path, config in chain:
        plans.append(plan_phase(phase_path, config, ranks, before, tokens_per_s))
        before += plans[-1].tokens
    return plans


def format_plan(plans: list[PhasePlan]) -> str:
    lines = []
    for p in plans:
        hours = f"{p.hours:,.1f} h at {p.tokens_per_s:,.0f} tok/s" if p.hours else "time: pass --tokens-per-sec"
        lines += [f"{p.run_name} ({p.config})",
                  f"  {p.tokens:,} tokens (chain total after it: {p.tokens_before + p.tokens:,}), {p.steps:,} steps "
                  f"of up to {p.global_batch_rows} x {p.max_seq_len} ({p.micro_batches_per_step} micro-batches), "
                  f"{hours}",
                  f"  starts from {p.starts_from}; {p.checkpoints} checkpoints in {p.checkpoint_folder}",
                  f"  held-out evals: {_eval_summary(p)}",
                  f"  masking {p.mask_rate:.0%} of tokens; mixture {p.mixture_note}"]
        if p.mixture:
            lines.append(f"    {'stream':16} {'share':>7} {'tokens':>18} {'passes over its data':>21}")
            lines += [f"    {m['stream']:16} {m['token_share']:>7.1%} {m['tokens']:>18,} {m['epochs']:>21.2f}"
                      for m in p.mixture]
        lines.append(f"  {'milestone':18} {'tokens':>18} {'step':>10} {'LR':>10} {'batch':>6}")
        lines += [f"  {m.name:18} {m.tokens:>18,} {m.step:>10,} {m.lr:>10.3e} {m.global_batch_rows:>6}"
                  for m in p.milestones]
    return "\n".join(lines)


def _eval_summary(plan: PhasePlan) -> str:
    if not plan.eval_steps:
        return "none (no eval.interval)"
    shown = ", ".join(f"{s:,}" for s in plan.eval_steps[:4])
    more = f", ... {plan.eval_steps[-1]:,}" if len(plan.eval_steps) > 4 else ""
    return f"{len(plan.eval_steps)} (every {plan.eval_interval}, at the start and the end): steps {shown}{more}"


def plan_json(plans: list[PhasePlan]) -> str:
    return json.dumps([asdict(p) for p in plans], indent=1)


def draw_plan(chain: list[tuple[Path, object]], plans: list[PhasePlan], path: str | Path, ranks: int) -> None:
    """LR and global batch against the chain's tokens."""
    import matplotlib  # noqa: PLC0415 (pyplot after the Agg backend is chosen, and only when a PNG is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (pyplot after the Agg backend is chosen, and only when a PNG is drawn)


    fig, (ax_lr, ax_batch) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for (_, config), p in zip(chain, plans):
        clock = StepClock(config, ranks)
        xs = [p.tokens * i // 400 for i in range(401)]
        ax_lr.plot([(p.tokens_before + x) / 1e9 for x in xs],
                   [lr_at(config.schedule, config.optimizer.lr, x, p.tokens) for x in xs], label=p.run_name)
        ax_batch.plot([(p.tokens_before + x) / 1e9 for x in xs], [clock.rows(x) for x in xs], label=p.run_name)
    ax_lr.set_ylabel("learning rate")
    ax_batch.set_ylabel("global batch (rows)")
    ax_batch.set_xlabel("tokens (billions)")
    for ax in (ax_lr, ax_batch):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
