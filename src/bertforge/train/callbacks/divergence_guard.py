"""The divergence guard: a step whose loss or gradient norm is non-finite, or spikes, never reaches the weights.

After the backward pass of each step (all micro-batches, all ranks) and before the optimizer, the guard reduces
the step's global mean loss and gradient norm in one all-reduce, so every rank sees the same numbers and decides
the same. A step it does not accept has its gradients dropped (Adam-family optimizers skip a parameter without a
gradient: no update, no moment decay, no weight decay, no step count), then, by the configured action:

- ``skip``: that is all; the count is kept, and too many in a row stop the run;
- ``rollback``: at the next step start, the newest checkpoint that verifies and predates the step before the
  rejected one is reloaded (model, optimizer, token clock: a loss shows the damage of the update before it) while
  the data stays where it is, so the window that led to the spike is skipped; checkpoints after it are set aside in
  ``incomplete/``; the LR is scaled by ``rollback_lr_scale`` from then on; after ``max_rollbacks`` the run stops;
- ``stop``: training ends after this step and `bertforge train` exits non-zero, naming the step and tokens.

Its state (the recent losses and gradient norms, counts, LR scale) rides in every checkpoint, so a run restarted
after a crash makes the same decisions at the same steps.
"""

from __future__ import annotations

import json
import math
import statistics

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist
from composer.utils.checkpoint import load_checkpoint

from bertforge.checkpoint.run_folder import RunFolder
from bertforge.checkpoint.safe_load import check_checkpoint
from bertforge.train.config import StabilityConfig


class DivergenceGuard(Callback):
    def __init__(self, config: StabilityConfig, folder: RunFolder):
        self.config = config
        self.folder = folder
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.rollbacks = 0
        self.lr_scale = 1.0
        self.skipped = 0
        self.skipped_in_a_row = 0
        self.stop_reason: str | None = None
        self.last_step_rejected = False
        """The step just taken was not applied; the checkpoint saver does not save after it."""
        self._loss_sum: torch.Tensor | float = 0.0
        self._masked = 0
        self._event: dict | None = None
        self._rollback_before: int | None = None

    # -- measuring ------------------------------------------------------------------------------------------
    def before_train_batch(self, state: State, logger: Logger) -> None:
        self._loss_sum, self._masked, self._event = 0.0, 0, None
        self.last_step_rejected = False

    def after_loss(self, state: State, logger: Logger) -> None:
        masked = int(state.batch["num_masked"])
        self._loss_sum = self._loss_sum + state.loss.detach().float() * masked
        self._masked += masked

    def _global_loss_and_grad_norm(self, state: State) -> tuple[float, float]:
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        sharded = any(hasattr(g, "to_local") for g in grads)
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        squares = sum((g.detach().float().pow(2).sum() for g in local), state.device.tensor_to_device(torch.zeros(())))
        # Shards add up to the whole gradient; replicated (DDP) gradients are the same on every rank.
        squares = squares if sharded else squares / dist.get_world_size()
        loss_sum = torch.as_tensor(self._loss_sum, dtype=torch.float32, device=squares.device).reshape(())
        packed = torch.stack([loss_sum, torch.tensor(float(self._masked), device=squares.device), squares])
        dist.all_reduce(packed, reduce_operation="SUM")
        loss_sum, masked, squares = packed.tolist()
        return loss_sum / max(masked, 1.0), math.sqrt(squares) if squares >= 0 else math.nan

    # -- deciding --------------------------------------------------------------------------------------------
    def _spike(self, loss: float, grad_norm: float) -> str | None:
        if len(self.losses) < self.config.min_history:
            return None
        mean = statistics.fmean(self.losses)
        spread = max(statistics.pstdev(self.losses), 0.01 * abs(mean))  # a floor, for a flat history
        if self.config.loss_zscore and loss > mean + self.config.loss_zscore * spread:
            return (f"loss {loss:.4g} is {(loss - mean) / spread:.1f} standard deviations above the recent mean "
                    f"{mean:.4g}")
        norm_mean = statistics.fmean(self.grad_norms)
        if self.config.grad_norm_ratio and grad_norm > self.config.grad_norm_ratio * norm_mean:
            return f"gradient norm {grad_norm:.4g} is {grad_norm / norm_mean:.1f}x the recent mean {norm_mean:.4g}"
        return None

    def after_train_batch(self, state: State, logger: Logger) -> None:
        if not self.config.enabled:
            return
        loss, grad_norm = self._global_loss_and_grad_norm(state)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            reason, action = f"non-finite loss ({loss}) or gradient norm ({grad_norm})", self.config.on_nonfinite
        elif (spike := self._spike(loss, grad_norm)) is not None:
            reason, action = spike, self.config.on_spike
        else:
            self.losses = (self.losses + [loss])[-self.config.window:]
            self.grad_norms = (self.grad_norms + [grad_norm])[-self.config.window:]
            self.skipped_in_a_row = 0
            return
        if action == "rollback" and self.rollbacks >= self.config.max_rollbacks:
            action, reason = "stop", f"{reason}; the {self.config.max_rollbacks} rollbacks allowed are used up"
        if action == "skip" and self.skipped_in_a_row >= self.config.max_skips_in_a_row:
            action, reason = "stop", f"{reason}; {self.skipped_in_a_row} steps in a row were already skipped"
        for param in state.model.parameters():
            param.grad = None  # the optimizer leaves a parameter without a gradient untouched
        self.last_step_rejected = True
        self.skipped += 1
        self.skipped_in_a_row += 1
        batch = int(state.timestamp.batch) + 1  # the step being taken (the clock advances after it)
        self._event = {"event": action, "batch": batch, "tokens_before": int(state.timestamp.token),
                       "reason": reason, "loss": loss if math.isfinite(loss) else None,
                       "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                       "nonfinite": not (math.isfinite(loss) and math.isfinite(grad_norm))}

    # -- acting ----------------------------------------------------------------------------------------------
    def batch_end(self, state: State, logger: Logger) -> None:
        if self._event is None:
            return
        event, self._event = self._event, None
        action = event["event"]
        if action == "stop":
            self.stop_reason = (f"stopped by the divergence guard at batch {event['batch']} after "
                                f"{event['tokens_before']:,} tokens: {event['reason']}; the last checkpoint in "
                                f"{self.folder.path} holds only accepted steps (see docs/training.md, 'Faults')")
            state.stop_training()
        elif action == "rollback":
            self._rollback_before = event["batch"] - 1
        logger.log_metrics({"stability/skipped_steps": self.skipped, "stability/rollbacks": self.rollbacks,
                            "stability/lr_scale": self.lr_scale})
        if dist.get_global_rank() == 0:
            with self.folder.metrics.open("a") as fh:
                fh.write(json.dumps(event, allow_nan=False) + "\n")
            print(f"[batch {event['batch']}] divergence guard: {action}: {event['reason']}", flush=True)

    def batch_start(self, state: State, logger: Logger) -> None:
        """Roll back before this step (and before its LR is set, which depends on the restored token clock)."""
        if self._rollback_before is None:
            return

        before, self._rollback_before = self._rollback_before, None
        found = [self._rollback_target(before) if dist.get_global_rank() == 0 else None]
        dist.broadcast_object_list(found, src=0)
        if found[0] is None:
            self.stop_reason = (f"the divergence guard found no good checkpoint from before batch {before} to roll "
                                f"back to; lower optimizer.lr, or checkpoint more often (checkpoint.interval)")
            state.stop_training()
            return
        # The weights, optimizer and token clock of the checkpoint; this run's data position, RNG and callback
        # state (the guard's own history and counts among them) stay as they are.
        load_checkpoint(found[0], state, logger, ignore_keys=["state/callbacks/*", "state/dataset_state", "rng"])
        self.rollbacks += 1
        self.lr_scale *= self.config.rollback_lr_scale
        if dist.get_global_rank() == 0:
            print(f"divergence guard: rolled back to {found[0]} (rollback {self.rollbacks} of "
                  f"{self.config.max_rollbacks}), LR scale {self.lr_scale:g}", flush=True)

    def _rollback_target(self, before: int) -> str | None:
        """The newest good checkpoint from before batch ``before``; the ones after it are set aside."""
        target = self.folder.newest_valid_checkpoint(report=False, at_most_batch=before - 1)
        if target is None:
            return None
        check_checkpoint(target)
        self.folder.set_aside_newer_than(target, "superseded by a rollback")
        return str(target)

    # -- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"losses": self.losses, "grad_norms": self.grad_norms, "rollbacks": self.rollbacks,
                "lr_scale": self.lr_scale, "skipped": self.skipped, "skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.losses, self.grad_norms = list(state["losses"]), list(state["grad_norms"])
        self.rollbacks, self.lr_scale = state["rollbacks"], state["lr_scale"]
        self.skipped, self.skipped_in_a_row = state["skipped"], state["skipped_in_a_row"]
