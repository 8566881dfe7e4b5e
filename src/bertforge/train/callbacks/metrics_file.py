"""Monitoring: metrics.jsonl, throughput and MFU, the console line with ETA, and the loss/LR curves PNG."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from torch._dynamo.utils import counters as dynamo_counters

from bertforge.atomic import atomic_path
from bertforge.checkpoint.run_folder import RunFolder, read_metric_records
from bertforge.model.config import ModernBertConfig
from bertforge.model.flops import device_peak_flops, flops_per_token


class MetricsFile(Callback):
    """``metrics.jsonl``, throughput and MFU, a console line, and the loss/LR PNG at the end."""

    def __init__(self, folder: RunFolder, model_config: ModernBertConfig, mask_rate: float, peak_flops: float | None,
                 interval: int, total_tokens: int | None):
        self.folder = folder
        self.path = folder.metrics
        self.model_config = model_config
        self.mask_rate = mask_rate
        self.peak_flops = device_peak_flops(peak_flops)
        self.interval = interval
        self.total_tokens = total_tokens
        self._start = self._window_start = 0.0
        self._tokens_at_start = 0
        self._real = self._slots = self._docs = self._masked = self._rows_before = 0

    def fit_start(self, state: State, logger: Logger) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._start = self._window_start = time.time()
        self._tokens_at_start = int(state.timestamp.token)

    def before_train_batch(self, state: State, logger: Logger) -> None:
        batch = state.batch
        self._real += int(batch["num_tokens"])
        self._rows_before = int(state.timestamp.sample)
        self._slots += int(batch["num_slots"])
        self._docs += int(batch["num_docs"])
        self._masked += int(batch["num_masked"])

    def batch_end(self, state: State, logger: Logger) -> None:
        batch_index = int(state.timestamp.batch)
        if batch_index % self.interval:
            return
        # Wall-clock since the last record: data loading, step, callbacks and checkpoints, as a user sees it.
        now = time.time()
        elapsed, self._window_start = max(now - self._window_start, 1e-9), now
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        grad_norm = math.sqrt(sum(float(g.detach().float().norm() ** 2) for g in grads)) if grads else 0.0
        world = dist.get_world_size()
        tokens = int(state.timestamp.token)
        tokens_per_s = self._real / elapsed
        mean_doc = self._real / max(self._docs, 1)
        flops = flops_per_token(self.model_config, mean_doc, self.mask_rate) * tokens_per_s
        acc = state.train_metric_values.get("MaskedAccuracy")
        record = {
            "batch": batch_index, "tokens": tokens,
            "global_batch_rows": int(state.timestamp.sample) - self._rows_before,
            "loss": state.total_loss_dict["loss/train/total"],
            "masked_accuracy": float(acc) if acc is not None else None,
            "lr": state.optimizers[0].param_groups[0]["lr"], "grad_norm": grad_norm,
            "tokens_per_s_per_device": tokens_per_s, "tokens_per_s": tokens_per_s * world,
            "mfu": flops / self.peak_flops if self.peak_flops else None,
            "packing_efficiency": self._real / max(self._slots, 1),
            "masked_share": self._masked / max(self._real, 1), "time": time.time() - self._start,
            # Graphs torch.compile has built in this process: 1 for a compiled run that never recompiled
            # (docs/model.md, "Compiling"), 0 for an eager one; growth means batches that force recompilation.
            "compiled_graphs": dynamo_counters["stats"]["unique_graphs"],
        }
        self._real = self._slots = self._docs = self._masked = 0
        nonfinite = [key for key, value in record.items() if isinstance(value, float) and not math.isfinite(value)]
        record.update({key: None for key in nonfinite}, **({"nonfinite": nonfinite} if nonfinite else {}))
        logger.log_metrics({f"throughput/{k}": v for k, v in record.items()
                            if k in ("tokens_per_s", "tokens_per_s_per_device", "mfu", "packing_efficiency")
                            and v is not None} | {"train/grad_norm": grad_norm, "train/lr": record["lr"]})
        if dist.get_global_rank() != 0:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, allow_nan=False) + "\n")  # non-finite values are null, flagged
        if self.total_tokens:
            eta = eta_seconds(tokens, self._tokens_at_start, record["time"], self.total_tokens)
            loss = "non-finite" if record["loss"] is None else f"{record['loss']:.4f}"
            print(f"[batch {batch_index}] tokens {tokens:,}/{self.total_tokens:,} loss {loss} "
                  f"lr {record['lr']:.2e} {tokens_per_s * world:,.0f} tok/s ETA {eta / 60:.1f} min", flush=True)

    def fit_end(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        plot_curves(self.path, self.folder.curves, self.mask_rate)


def eta_seconds(tokens: int, tokens_at_start: int, elapsed: float, total_tokens: int) -> float:
    """Seconds to ``total_tokens`` at the rate of this process: the tokens trained since it started over the time
    since. A resumed run starts its clock at the restart but its token count at the checkpoint's, so counting all
    ``tokens`` would make the rate (and shrink the ETA) by the tokens trained before (1.5 min instead of 72 on a
    run resumed at 7M of 36M tokens)."""
    rate = (tokens - tokens_at_start) / max(elapsed, 1e-9)
    return (total_tokens - tokens) / max(rate, 1e-9)


def plot_curves(metrics: Path, out: Path, mask_rate: float) -> None:
    """The training and held-out loss and the LR against tokens, and the probe's scores when the run has them."""
    import matplotlib  # noqa: PLC0415 (pyplot after the Agg backend is chosen, and only when a PNG is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (pyplot after the Agg backend is chosen, and only when a PNG is drawn)


    records = read_metric_records(metrics)
    rows = [row for row in records if "event" not in row and row["loss"] is not None]
    evals = [row for row in records if row.get("event") == "eval"]
    probes = [row for row in records if row.get("event") == "probe"]
    if not rows:
        return
    tokens = [r["tokens"] for r in rows]
    fig, axes = plt.subplots(3 if probes else 2, 1, figsize=(8, 9 if probes else 6), sharex=True)
    ax_loss, ax_lr = axes[0], axes[-1]
    ax_loss.plot(tokens, [r["loss"] for r in rows], label=f"train (masking {mask_rate:.0%})" if evals else None)
    if evals:
        ax_loss.plot([r["tokens"] for r in evals], [r["loss"] for r in evals], "o-", color="tab:green",
                     label="held-out eval")
        ax_loss.legend()
    ax_loss.set_ylabel("MLM loss")
    ax_loss.grid(alpha=0.3)
    if probes:
        for name in dict.fromkeys(name for row in probes for name in row["tasks"]):
            points = [(row["tokens"], row["tasks"][name]) for row in probes if name in row["tasks"]]
            axes[1].plot([t for t, _ in points], [100 * p["score"] for _, p in points], "o-",
                         label=f"{name} ({points[0][1]['metric']})")
        axes[1].set_ylabel("probe score (%)")
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
    ax_lr.plot(tokens, [r["lr"] for r in rows], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("real tokens")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
