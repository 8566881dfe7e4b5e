"""`bertforge train` against an independent trainer (tests/reference_trainer.py): the same initial weights and the
same batches give the same loss at every step and the same final weights, on 1 rank, with gradient accumulation,
and on 2 ranks (DDP); and the parity would catch a wrong weight-decay set, a schedule one step late and a loss
averaged per micro-batch."""

import pytest
import yaml
from helpers import read_metrics, run_config, train_ranks
from reference_trainer import Mutation, train_reference
from transformers import AutoModelForMaskedLM

from bertforge.export.folder import export_fresh_model
from bertforge.model.config import load_model_config
from bertforge.train.config import load_train_config
from bertforge.train.run import build_data

STEPS = 30  # of 4 rows x 256 slots (all real tokens); bench/reference_parity.py runs longer ones
TOLERANCE = 1e-4


def _setup(tmp_path, sample_data, name: str, steps: int = STEPS, **data) -> tuple:
    start = tmp_path / "start"
    if not start.is_dir():
        export_fresh_model(load_model_config("tiny"), start, seed=3)
    path = run_config(tmp_path, sample_data, name, max_duration=f"{steps * 1024}tok", init_from=str(start),
                      export_dir=str(tmp_path / name / "hf"), checkpoint={"interval": "1000ba", "keep": 1},
                      precision="fp32",  # the reference trainer's
                      # decay strong enough that decaying the wrong set of parameters shows within 50 steps
                      optimizer={"name": "stableadamw", "lr": 1e-3, "weight_decay": 1e-3})
    config = yaml.safe_load(path.read_text())
    config["data"].update(data)
    path.write_text(yaml.safe_dump(config))
    return path, start


def _reference(config_path, start, mutation: Mutation = Mutation(), steps: int | None = None):
    config = load_train_config(config_path)
    _, batches = build_data(config, world_size=1)
    recorded = []
    for step in batches:
        recorded.append([{k: m[k] for k in ("input_ids", "labels", "cu_seqlens", "num_tokens")}
                         for m in step["micro_batches"]])
        if sum(int(m["num_tokens"]) for s in recorded for m in s) >= config.total_tokens or len(recorded) == steps:
            break
    opt = config.optimizer
    return train_reference(start, recorded, total_tokens=config.total_tokens, lr=opt.lr, betas=tuple(opt.betas),
                           eps=opt.eps, weight_decay=opt.weight_decay, schedule=vars(config.schedule),
                           mutation=mutation)


def _differences(run_dir, losses) -> list[float]:
    ours = read_metrics(run_dir)
    return [abs(ours[i + 1]["loss"] - loss) for i, loss in enumerate(losses)]


def _assert_parity(run_dir, losses, model):
    assert len(read_metrics(run_dir)) == len(losses) >= STEPS - 2
    differences = _differences(run_dir, losses)
    assert max(differences) < TOLERANCE, f"largest step-loss difference {max(differences):.2e}"
    assert losses[-1] < losses[0] - 0.5  # it trained
    exported = AutoModelForMaskedLM.from_pretrained(run_dir / "hf").state_dict()
    mine = model.state_dict()
    assert max((exported[k] - mine[k]).abs().max().item() for k in exported) < 1e-4


@pytest.mark.slow
def test_one_rank_and_two_ranks_ddp_equal_an_independent_trainer(tmp_path, sample_data):
    """pack_across_ranks: both runs see the same global batches, so one reference serves both."""
    one, start = _setup(tmp_path, sample_data, "one", pack_across_ranks=True)
    two, _ = _setup(tmp_path, sample_data, "two", pack_across_ranks=True)
    for config, ranks in ((one, 1), (two, 2)):
        result = train_ranks(config, ranks)
        assert result.returncode == 0, result.stderr[-3000:]
    losses, model = _reference(one, start)
    _assert_parity(tmp_path / "one", losses, model)
    _assert_parity(tmp_path / "two", losses, model)


@pytest.mark.slow
def test_gradient_accumulation_equals_an_independent_trainer_and_parity_catches_mistakes(tmp_path, sample_data):
    config, start = _setup(tmp_path, sample_data, "acc", micro_batch_size=1)  # four micro-batches a step
    result = train_ranks(config, 1)
    assert result.returncode == 0, result.stderr[-3000:]
    losses, model = _reference(config, start)
    _assert_parity(tmp_path / "acc", losses, model)
    for mutation in (Mutation(decay_everything=True), Mutation(schedule_one_step_late=True),
                     Mutation(mean_per_micro_batch=True)):
        wrong, _ = _reference(config, start, mutation, steps=10)
        worst = max(_differences(tmp_path / "acc", wrong))
        assert worst > 10 * TOLERANCE, f"{mutation} went unnoticed (largest difference {worst:.2e})"
