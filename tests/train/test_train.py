"""`bertforge train` for real: Composer runs on the sample corpus, checkpoints, kill + autoresume, export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import assert_export_matches, kill_when_saved, read_metrics, run_config, train_ranks, wandb_runs

from bertforge.errors import ConfigError
from bertforge.train.config import ScheduleConfig, load_train_config
from bertforge.train.precision import cpu_bf16_units
from bertforge.train.preflight import check_batch
from bertforge.train.schedules import lr_multiplier

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def _train(config: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, "train", str(config), *extra], capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.mark.slow
@pytest.mark.command("train")
def test_quickstart_config_trains_end_to_end_and_exports(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "qs", export_dir=str(tmp_path / "hf"),
                         wandb={"enabled": True, "project": "bertforge-tests", "tags": ["ci"]})
    result = _train(config, env=os.environ | {"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    # The default precision ('auto'): bf16 autocast where this CPU has bf16 units, float32 where it has none.
    assert f"precision: {'amp_bf16' if cpu_bf16_units() else 'fp32'}" in result.stdout
    folder = tmp_path / "qs"
    metrics = read_metrics(folder)
    assert sorted(metrics) == list(range(1, 13))
    for key in ("batch", "tokens", "loss", "masked_accuracy", "lr", "grad_norm", "tokens_per_s",
                "packing_efficiency"):
        assert all(row[key] is not None for row in metrics.values()), key
    assert metrics[12]["tokens"] >= 12288
    assert metrics[12]["loss"] < metrics[1]["loss"] - 0.5
    # Each step's LR is the schedule at the tokens seen before it: 0 for the first step only.
    schedule = ScheduleConfig(name="wsd", warmup_tokens=2048, decay_tokens=4096, decay_shape="1-sqrt")
    seen_before = [0] + [metrics[b]["tokens"] for b in range(1, 12)]
    for batch, tokens in zip(range(1, 13), seen_before):
        assert metrics[batch]["lr"] == pytest.approx(2e-3 * lr_multiplier(schedule, tokens, 12288), abs=1e-12)
    assert metrics[1]["lr"] == 0 and metrics[2]["lr"] > 0
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in folder.glob("ep*-ba*-rank0.pt")) == [
        "ep0-ba12-rank0.pt", "ep0-ba4-rank0.pt", "ep0-ba8-rank0.pt"]
    # The export loads in transformers and gives the logits of the final checkpoint.
    assert_export_matches(tmp_path / "hf", folder / "ep0-ba12-rank0.pt", atol=1e-4)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    # W&B (offline): one run holding the resolved config and every step's loss, LR and throughput.
    runs = wandb_runs(folder)
    assert len(runs) == 1
    (logged_config, history), = runs.values()
    assert logged_config["run_name"] == "qs" and logged_config["global_batch_size"] == 4
    assert logged_config["schedule"]["decay_shape"] == "1-sqrt" and logged_config["wandb"]["tags"] == ["ci"]
    logged = {int(row["time/batch"]): row for row in history if "loss/train/total" in row}
    assert len(logged) == 12
    for batch, row in metrics.items():
        assert logged[batch - 1]["loss/train/total"] == pytest.approx(row["loss"], rel=1e-6)
    assert any("throughput/tokens_per_s" in row and "train/lr" in row for row in history)


@pytest.mark.slow
def test_killed_run_autoresumes_with_identical_losses(tmp_path, sample_data):
    reference = run_config(tmp_path, sample_data, "ref")
    assert _train(reference).returncode == 0
    expected = read_metrics(tmp_path / "ref")

    killed = run_config(tmp_path, sample_data, "killed", wandb={"enabled": True})
    folder = tmp_path / "killed"
    kill_when_saved(killed, folder)  # a real crash: no chance to save anything more
    assert not (folder / "ep0-ba12-rank0.pt").exists(), "the run finished before it could be killed"
    # The kill may land while ba8 is being written (then the run resumes from ba4 and ba8 is set aside).
    resumed_from = int(os.readlink(folder / "latest-rank0.pt").split("-ba")[1].split("-")[0])
    assert resumed_from in (4, 8)

    result = _train(killed)  # autoresume is on by default
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_metrics(folder)
    assert sorted(resumed) == sorted(expected)
    assert (folder / "ep0-ba12-rank0.pt").is_file()
    for batch in range(resumed_from + 1, 13):
        assert abs(resumed[batch]["loss"] - expected[batch]["loss"]) <= 1e-6, batch
        assert resumed[batch]["tokens"] == expected[batch]["tokens"]
        assert resumed[batch]["lr"] == pytest.approx(expected[batch]["lr"], rel=1e-9)
    # The restart logged to the same W&B run id (what the killed attempt had not flushed is lost).
    attempts = sorted(folder.glob("wandb/offline-run-*"))
    assert len(attempts) == 2 and len({path.name.rsplit("-", 1)[1] for path in attempts}) == 1
    (_, history), = wandb_runs(folder).values()
    assert {int(row["time/batch"]) for row in history if "loss/train/total" in row} >= set(range(resumed_from, 12))


def test_unknown_key_names_file_key_and_nearest(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "bad", global_batchsize=8)
    expected = rf"{config}.*unknown key 'global_batchsize'; did you mean 'global_batch_size'"
    with pytest.raises(ConfigError, match=expected):
        load_train_config(config)


def test_nested_typo_and_override_typo(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "bad")
    with pytest.raises(ConfigError, match="unknown key 'optimizer.lrr'; did you mean 'optimizer.lr'"):
        load_train_config(config, ["optimizer.lrr=1e-3"])


@pytest.mark.parametrize("override,on_gpu,on_cpu", [([], True, False), (["compile=true"], True, True),
                                                    (["compile=false"], False, False)])
def test_compile_is_on_for_gpus_by_default_and_as_set_otherwise(tmp_path, sample_data, override, on_gpu, on_cpu):
    config = load_train_config(run_config(tmp_path, sample_data, "compile"), override)
    assert (config.compiled_on("gpu"), config.compiled_on("cpu")) == (on_gpu, on_cpu)


def test_missing_data_path_fails_before_training(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "nodata")
    result = _train(config, "data.streams.code.local=/nowhere/code")
    assert result.returncode == 2
    assert "data.streams.code.local '/nowhere/code' holds no prepared dataset" in result.stderr
    assert not (tmp_path / "nodata" / "metrics.jsonl").exists()


def test_tokenizer_larger_than_the_model_is_refused(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "vocab")
    result = _train(config, "model.vocab_size=1024")
    assert result.returncode == 2
    assert "has 2048 tokens but model.vocab_size is 1024; set model.vocab_size=2048" in result.stderr


def test_batch_not_divisible_by_ranks_is_refused(tmp_path, sample_data):
    config = load_train_config(run_config(tmp_path, sample_data, "div", global_batch_size=6))
    with pytest.raises(ConfigError, match=r"'global_batch_size' \(6\) must be divisible by the number of ranks \(4\)"):
        check_batch(config, 4)


def test_print_config_resolves_includes(tmp_path, sample_data):
    result = _train(run_config(tmp_path, sample_data, "print"), "--print-config", "optimizer.lr=0.005")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["hidden_size"] == 256 and printed["optimizer"]["lr"] == 0.005


def test_checkpoints_that_do_not_verify_are_set_aside_not_deleted(tmp_path):
    from bertforge.checkpoint.manifest import write_manifest
    from bertforge.checkpoint.run_folder import RunFolder

    (tmp_path / "ep0-ba4-rank0.pt").write_bytes(b"complete")
    write_manifest(tmp_path / "ep0-ba4-rank0.pt")
    (tmp_path / "ep0-ba8-rank0.pt").write_bytes(b"partial")  # killed before its manifest was written
    (tmp_path / "latest-rank0.pt").symlink_to("ep0-ba8-rank0.pt")
    assert RunFolder(tmp_path).resume_point() == tmp_path / "ep0-ba4-rank0.pt"
    assert (tmp_path / "incomplete" / "ep0-ba8-rank0.pt").read_bytes() == b"partial"
    assert (tmp_path / "ep0-ba4-rank0.pt").is_file()


@pytest.mark.slow
def test_one_process_ddp_and_fsdp2_give_the_same_losses(tmp_path, sample_data):
    """Same global batch of 4 rows on one rank (two micro-batches of 2, accumulated), and on two real ranks over
    gloo with DDP (launched by torchrun) and with FSDP2 (sharded; launched by composer; two micro-batches of 1
    each): with pack_across_ranks the batches do not depend on the number of ranks, and the loss is the mean over
    the step's masked tokens, so the losses must agree step by step. The sharded FSDP2 checkpoint then exports
    to a model transformers loads."""
    losses = {}
    for mode, ranks in (("single", 1), ("ddp", 2), ("fsdp2", 2)):
        config = run_config(tmp_path, sample_data, mode, parallelism="ddp" if mode == "single" else mode,
                             max_duration="8192tok", optimizer={"name": "adamw", "lr": 2e-3}, precision="fp32")
        result = train_ranks(config, ranks, "data.pack_across_ranks=true", f"data.micro_batch_size={2 // ranks}",
                              launcher="torchrun" if mode == "ddp" else "composer")
        assert result.returncode == 0, result.stderr[-3000:]
        losses[mode] = [row["loss"] for _, row in sorted(read_metrics(tmp_path / mode).items())]
    assert len(losses["single"]) == 8 and losses["single"][-1] < losses["single"][0] - 0.5
    assert losses["ddp"] == pytest.approx(losses["single"], abs=2e-5)
    assert losses["fsdp2"] == pytest.approx(losses["single"], abs=2e-5)

    sharded = tmp_path / "fsdp2" / "ep0-ba8"
    assert sorted(p.name for p in sharded.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    result = subprocess.run([BERTFORGE, "export", str(sharded), str(tmp_path / "hf"),
                             "--tokenizer", sample_data["tokenizer"]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_export_matches(tmp_path / "hf", tmp_path / "single" / "ep0-ba8-rank0.pt", atol=1e-3)
    assert_export_matches(tmp_path / "hf", sharded)


@pytest.mark.slow
def test_sharded_fsdp2_checkpoint_resumes_each_ranks_data_exactly(tmp_path, sample_data):
    """Two ranks, each packing its own share: resuming from a sharded checkpoint restores every rank's loader
    state (not rank 0's twice), so the steps after it repeat the uninterrupted run's losses."""
    config = run_config(tmp_path, sample_data, "fsdp2", parallelism="fsdp2", max_duration="8192tok",
                         optimizer={"name": "adamw", "lr": 2e-3})
    folder = tmp_path / "fsdp2"
    assert train_ranks(config, 2).returncode == 0
    expected = read_metrics(folder)
    # As if the run had died while writing its second checkpoint: the save never reached its manifest.
    (folder / "ep0-ba8.manifest.json").unlink()
    result = train_ranks(config, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "incomplete" / "ep0-ba8").is_dir()
    resumed = read_metrics(folder)
    for batch in range(5, 9):
        assert resumed[batch]["tokens"] == expected[batch]["tokens"]
        assert abs(resumed[batch]["loss"] - expected[batch]["loss"]) <= 1e-6, batch


@pytest.mark.slow
def test_a_compiled_run_trains_like_an_eager_one_and_resumes(tmp_path, sample_data):
    """``compile: true`` changes no number that matters (float32, CPU: losses to 1e-4 over 8 steps), also across a
    kill after the compiled run's batch-4 checkpoint and the restart from it.

    The first step's gradients agree to 1e-6 of their size, but Adam's normalised update turns rounding-sized
    differences into steps of LR size, so the gap grows with the LR: over 8 steps, 1.9e-3 at LR 2e-3, 5.4e-4 at
    5e-4, 5e-5 at 1e-4 (measured); this test trains at 1e-4. Restarted or not, the compiled run's losses agreed to
    1e-6."""
    losses = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        config = run_config(tmp_path, sample_data, name, max_duration=f"{8 * 1024}tok", compile=compiled,
                            optimizer={"name": "stableadamw", "lr": 1e-4, "weight_decay": 1e-5}, precision="fp32")
        if compiled:
            kill_when_saved(config, tmp_path / name, "ep0-ba4-rank0.pt.manifest.json")
        result = _train(config)
        assert result.returncode == 0, result.stderr[-3000:]
        losses[name] = [row["loss"] for _, row in sorted(read_metrics(tmp_path / name).items())]
    assert f"resuming from {tmp_path / 'compiled' / 'ep0-ba4-rank0.pt'}" in result.stdout
    rows = [json.loads(row)["batch"] for row in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-4:] == [5, 6, 7, 8]
    assert len(losses["eager"]) == len(losses["compiled"]) == 8
    assert losses["compiled"] == pytest.approx(losses["eager"], abs=1e-4, rel=0)
    # Composer's compiled forward, fed the loader's micro-batches through the trainer's dynamic-size marks, built
    # one graph in each process (before and after the restart): no step recompiled. (Batches of widely varying
    # documents are checked in tests/model/test_compiled_step.py.)
    graphs = {name: {row["compiled_graphs"] for row in read_metrics(tmp_path / name).values()}
              for name in ("eager", "compiled")}
    assert graphs == {"eager": {0}, "compiled": {1}}


@pytest.mark.slow
def test_a_run_with_the_fused_mlm_loss_trains_like_the_plain_one(tmp_path, sample_data):
    metrics = {}
    for name, chunk in (("plain", 0), ("fused", 64)):
        config = run_config(tmp_path, sample_data, name, max_duration="4096tok", precision="fp32")
        result = _train(config, f"model.mlm_loss_chunk={chunk}")
        assert result.returncode == 0, result.stderr[-3000:]
        metrics[name] = [row for _, row in sorted(read_metrics(tmp_path / name).items())]
    assert len(metrics["fused"]) == 4
    for plain, fused in zip(metrics["plain"], metrics["fused"]):
        assert fused["loss"] == pytest.approx(plain["loss"], abs=1e-4)
        assert fused["masked_accuracy"] == pytest.approx(plain["masked_accuracy"], abs=0.01)  # a near tie may flip


@pytest.mark.slow
def test_batch_size_warmup_grows_the_step_and_resumes_where_it_was(tmp_path, sample_data):
    from bertforge.train.steps import global_batch_at

    config = run_config(tmp_path, sample_data, "warm", max_duration="8192tok", global_batch_size=8,
                         batch_warmup={"start": 2, "tokens": 4096}, checkpoint={"interval": "3ba", "keep": -1})
    folder = tmp_path / "warm"
    result = _train(config, "data.micro_batch_size=2")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(folder)
    slots, expected_rows = 0, []
    for _ in metrics:
        expected_rows.append(global_batch_at(slots, 2, 8, 4096, multiple_of=2))
        slots += expected_rows[-1] * 256
    assert [row["global_batch_rows"] for _, row in sorted(metrics.items())] == expected_rows
    assert expected_rows[0] == 2 and expected_rows[-1] == 8 and len(set(expected_rows)) >= 3
    # Resume from the checkpoint at batch 3, in the middle of the warmup (the later saves as if cut off before
    # their manifests): the same step sizes and losses follow.
    later = [p for p in folder.glob("ep0-ba*-rank0.pt.manifest.json") if not p.name.startswith("ep0-ba3-")]
    assert later
    for manifest in later:
        manifest.unlink()
    result = _train(config, "data.micro_batch_size=2")
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_metrics(folder)
    for batch in range(4, len(metrics) + 1):
        assert resumed[batch]["global_batch_rows"] == metrics[batch]["global_batch_rows"]
        assert abs(resumed[batch]["loss"] - metrics[batch]["loss"]) <= 1e-6, batch


def test_warmup_start_must_be_made_of_whole_micro_batches(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "bad", global_batch_size=8, batch_warmup={"start": 3, "tokens": 100})
    result = _train(config, "data.micro_batch_size=2")
    assert result.returncode == 2
    assert "'batch_warmup.start' (3) must be a multiple of ranks x data.micro_batch_size (1 x 2 = 2)" in result.stderr


def test_stableadamw_with_fsdp2_on_cpu_is_refused(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "refuse", parallelism="fsdp2")
    result = _train(config)
    assert result.returncode == 2
    assert "use optimizer.name=adamw with fsdp2, or parallelism=ddp" in result.stderr


@pytest.mark.slow
def test_new_phase_starts_from_weights_with_a_fresh_clock(tmp_path, sample_data):
    from bertforge.checkpoint.read import load_checkpoint_model

    first = run_config(tmp_path, sample_data, "phase1", max_duration="8192tok")
    assert _train(first).returncode == 0
    start = tmp_path / "phase1" / "ep0-ba8-rank0.pt"
    second = run_config(tmp_path, sample_data, "phase2", max_duration="3072tok",
                         checkpoint={"interval": "1ba", "load_path": str(start), "load_weights_only": True})
    result = _train(second, "data.mask_rate=0.05")  # mmBERT-style: each phase masks at its own rate
    assert result.returncode == 0, result.stderr[-3000:]
    phase1, phase2 = read_metrics(tmp_path / "phase1"), read_metrics(tmp_path / "phase2")
    assert all(abs(row["masked_share"] - 0.3) < 0.03 for row in phase1.values())
    assert all(abs(row["masked_share"] - 0.05) < 0.02 for row in phase2.values())
    assert phase2[1]["tokens"] == 1024  # the token clock starts again
    assert phase2[1]["loss"] < phase1[1]["loss"] - 0.5  # it starts from trained weights, not a fresh init
    # Three steps after loading (warmup starts at LR 0), the weights moved from phase 1's by small updates only.
    before = load_checkpoint_model(start).state_dict()
    after = load_checkpoint_model(tmp_path / "phase2" / "ep0-ba3-rank0.pt").state_dict()
    delta = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < delta < 0.05
