"""The shipped ModernBERT phases, `bertforge plan`, phase chains, RoPE theta changes and continued pretraining."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from helpers import ROOT, read_metrics, wandb_runs

from bertforge.data.loader import packed_batch
from bertforge.labels import IGNORE_INDEX
from bertforge.model.modernbert import count_parameters
from bertforge.model.report import build_on_meta
from bertforge.train.callbacks.token_lr import TokenScheduler
from bertforge.train.config import load_train_config
from bertforge.train.phases import load_chain
from bertforge.train.plan import plan_chain
from bertforge.train.schedules import lr_multiplier
from bertforge.train.steps import StepBatches, global_batch_at

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))
PUBLISHED = {"base": 149_655_232, "large": 395_881_664}
PHASE_TOKENS = {"pretrain": 1_719_000_000_000, "extend": 250_000_000_000, "decay": 50_000_000_000}


@pytest.mark.parametrize("size", ["base", "large"])
def test_shipped_phases_resolve_build_and_plan_the_stated_tokens(size):
    for phase in PHASE_TOKENS:
        config = load_train_config(ROOT / f"yamls/modernbert-{size}/{phase}.yaml")
        assert count_parameters(build_on_meta(config.model)) == PUBLISHED[size]
        assert config.model.global_rope_theta == (10_000.0 if phase == "pretrain" else 160_000.0)
        assert config.model.local_rope_theta == 10_000.0
        assert config.data.max_seq_len == (1024 if phase == "pretrain" else 8192)
        assert config.data.mask_rate == 0.3 and config.optimizer.name == "stableadamw"
    plans = plan_chain(load_chain(ROOT / f"yamls/modernbert-{size}/decay.yaml"), ranks=8)
    assert [p.run_name for p in plans] == [f"modernbert-{size}-{phase}" for phase in PHASE_TOKENS]
    assert [p.tokens for p in plans] == list(PHASE_TOKENS.values())
    assert plans[-1].tokens_before + plans[-1].tokens == 2_019_000_000_000
    assert plans[-1].milestones[-1].lr == pytest.approx(plans[-1].milestones[0].lr * 0.001)


def test_plan_lr_and_batch_equal_the_formula_and_the_trainer(tmp_path):
    """At chosen token counts, plan's LR and batch are the formula's and what the trainer's own LR callback and
    step grouping produce when stepped there."""
    path = ROOT / "yamls/modernbert-base/pretrain.yaml"
    ((_, config),) = chain = load_chain(path)
    plan = plan_chain(chain, ranks=8)[0]
    by_name = {m.name: m for m in plan.milestones}
    assert by_name["start"].global_batch_rows == 768 and by_name["batch warmup done"].global_batch_rows == 4608
    assert by_name["lr warmup done"].lr == pytest.approx(8e-4)
    # The trainer's LR callback, stepped to those tokens, sets the same LR on a real optimizer.
    scheduler = TokenScheduler(config.schedule, plan.tokens, config.optimizer.lr)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for tokens in (0, 1_000_000_000, 2_999_999_999, 3_000_000_000, 25_000_000_000, 1_000_000_000_000):
        scheduler.batch_start(SimpleNamespace(timestamp=SimpleNamespace(token=tokens), optimizers=[optimizer]), None)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(8e-4 * lr_multiplier(config.schedule, tokens,
                                                                                        plan.tokens))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(8e-4 * min(tokens / 3e9, 1.0))
    # The trainer's step grouping, fed micro-batches, makes steps of the planned sizes (scaled down 1000x).
    ((_, small),) = small_chain = load_chain(path, ["global_batch_size=48", "batch_warmup.start=8",
                                                    "batch_warmup.tokens=200000", "data.micro_batch_size=1",
                                                    "max_duration=400000tok"])
    tokens = np.arange(1024)
    micro = packed_batch(np.array([1024]), tokens, np.where(tokens < 300, tokens, IGNORE_INDEX), [1], 1024)
    assert (micro.num_tokens, micro.num_slots, micro.num_masked) == (1024, 1024, 300)

    class Loader:
        config = small.data
        micro_batch_rows = small.data.micro_batch_size

        def __iter__(self):
            while True:
                yield micro

    steps = StepBatches(Loader(), small.global_batch_size, small.batch_warmup, world_size=8)
    small_plan = plan_chain(small_chain, ranks=8)[0]
    seen, made = 0, 0
    for step in steps:
        rows = step["num_slots"] // 1024 * 8  # each rank's share times 8 ranks
        assert rows == global_batch_at(seen, 8, 48, 200_000, multiple_of=8)
        seen += rows * 1024
        made += 1
        if seen >= small_plan.tokens:
            break
    assert made == small_plan.steps


@pytest.mark.command("plan")
def test_plan_cli_prints_json_and_draws_the_schedule(tmp_path):
    result = subprocess.run([BERTFORGE, "plan", str(ROOT / "yamls/modernbert-large/decay.yaml"), "--json",
                             "--tokens-per-sec", "1e6", "--png", str(tmp_path / "plan.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    plans = json.loads(result.stdout)
    assert sum(p["tokens"] for p in plans) == 2_019_000_000_000
    assert plans[0]["hours"] == pytest.approx(1_719_000_000_000 / 1e6 / 3600)
    assert plans[0]["milestones"][0]["global_batch_rows"] == 768
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rope_theta_changes_the_rotary_frequencies():
    from bertforge.model import ModernBertForMaskedLM
    from bertforge.model.config import load_model_config
    from bertforge.model.hf_io import to_hf_config

    config = load_model_config("tiny", ["vocab_size=512", "pad_token_id=0", "cls_token_id=1", "sep_token_id=2",
                                        "mask_token_id=3"])
    torch.manual_seed(0)
    short = ModernBertForMaskedLM(config).eval()
    long = ModernBertForMaskedLM(load_model_config("tiny", ["vocab_size=512", "pad_token_id=0", "cls_token_id=1",
                                                            "sep_token_id=2", "mask_token_id=3",
                                                            "global_rope_theta=160000"])).eval()
    long.load_state_dict(short.state_dict())
    ids = torch.randint(5, 512, (1, 600))
    assert [layer.attn.rope_theta for layer in long.model.layers] == [160000.0, 10000.0, 10000.0, 160000.0]
    assert [layer.attn.rope_theta for layer in short.model.layers] == [10000.0] * 4
    with torch.no_grad():  # same weights, other frequencies: other logits (small at init, attention is near uniform)
        assert (short(ids).logits - long(ids).logits).abs().max() > 5e-5
    assert to_hf_config(long.config)["global_rope_theta"] == 160000.0
    assert to_hf_config(long.config)["local_rope_theta"] == 10000.0


def _phase(tmp_path: Path, sample_data: dict, name: str, **fields) -> Path:
    config = {"run_name": name, "includes": {"model": str(ROOT / "yamls/models/tiny.yaml")},
              "save_folder": str(tmp_path / name), "global_batch_size": 4, "log_interval": 1,
              "optimizer": {"name": "adamw", "lr": 2e-3}, "checkpoint": {"interval": "100ba"},
              "data": {"tokenizer": sample_data["tokenizer"], "buffer_docs": 64,
                       "streams": {s: {"local": str(sample_data["mds"] / s), "proportion": p}
                                   for s, p in (("code", 0.5), ("web", 0.3), ("science", 0.2))}}}
    for key, value in fields.items():
        config[key] = value if not isinstance(value, dict) else config.get(key, {}) | value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, *extra: str) -> None:
    result = subprocess.run([BERTFORGE, "train", str(config), *extra], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_scaled_down_three_phase_chain(tmp_path, sample_data):
    """Pretrain at 128, extend to 512 with a new global RoPE theta, decay keeping the optimizer: phases chain by
    name alone, start from their predecessor's weights with a fresh clock, and record their lineage."""
    from transformers import AutoConfig

    from bertforge.checkpoint.read import load_checkpoint_model
    from bertforge.checkpoint.run_folder import read_checkpoint_state

    first = _phase(tmp_path, sample_data, "p1", max_duration="2048tok", data={"max_seq_len": 128},
                   schedule={"name": "wsd", "warmup_tokens": 512})
    second = _phase(tmp_path, sample_data, "p2", max_duration="2048tok", data={"max_seq_len": 512},
                    phase={"after": "p1.yaml"}, model={"global_rope_theta": 160000.0},
                    schedule={"name": "constant"}, export_dir=str(tmp_path / "p2-hf"), wandb={"enabled": True})
    third = _phase(tmp_path, sample_data, "p3", max_duration="2048tok", data={"max_seq_len": 512},
                   phase={"after": "p2.yaml", "load": "weights_and_optimizer"}, model={"global_rope_theta": 160000.0},
                   schedule={"name": "wsd", "decay_tokens": 2048, "decay_shape": "1-sqrt", "min_lr_ratio": 0.001})
    plans = plan_chain(load_chain(third), ranks=1)
    assert [p.tokens for p in plans] == [2048, 2048, 2048] and plans[2].tokens_before == 4096
    for config in (first, second, third):
        _run(config)
    p1, p2, p3 = ([row for _, row in sorted(read_metrics(tmp_path / name).items())]
                  for name in ("p1", "p2", "p3"))
    assert 1800 < p2[0]["tokens"] <= 2048 and 1800 < p3[0]["tokens"] <= 2048  # clocks reset: a step is 4 x 512
    assert p2[0]["loss"] < p1[0]["loss"] - 0.3  # phase 2 starts trained, not from a fresh init
    # By value: phase 2's first update moved phase 1's final weights only slightly.
    end1 = load_checkpoint_model(tmp_path / "p1" / "latest-rank0.pt").state_dict()
    state2 = read_checkpoint_state(tmp_path / "p2" / "latest-rank0.pt")
    after = load_checkpoint_model(tmp_path / "p2" / "latest-rank0.pt").state_dict()
    delta = max((after[k] - end1[k]).abs().max().item() for k in end1)
    assert 0 < delta < 0.05
    lineage = state2["callbacks"]["RunState"]["lineage"]
    assert lineage["phases"] == ["p1"] and lineage["tokens_before"] == 2048
    assert lineage["checkpoint"] == str((tmp_path / "p1" / "latest-rank0.pt").resolve())
    assert AutoConfig.from_pretrained(tmp_path / "p2-hf").global_rope_theta == 160000.0
    (wandb_config, _), = wandb_runs(tmp_path / "p2").values()  # the lineage is in the W&B run config too
    assert wandb_config["lineage"] == lineage
    # Phase 3 took the optimizer too: Adam's step count continues from phase 2's.
    optim3 = _read_full_optimizer_steps(tmp_path / "p3" / "latest-rank0.pt")
    assert optim3 == len(p2) + len(p3)
    assert p3[0]["lr"] == pytest.approx(2e-3)  # the decay phase starts at its peak


def _read_full_optimizer_steps(path: Path) -> int:
    state = torch.load(path, map_location="cpu", weights_only=False)["state"]["optimizers"]
    (optimizer,) = state.values()
    return int(next(iter(optimizer["state"].values()))["step"])


@pytest.mark.slow
def test_continued_pretraining_from_a_transformers_directory(tmp_path, sample_data):
    from transformers import AutoModelForMaskedLM, ModernBertConfig, ModernBertForMaskedLM

    from bertforge.model.config import load_model_config
    from bertforge.model.hf_io import to_hf_config

    torch.manual_seed(3)
    hf = ModernBertForMaskedLM(ModernBertConfig(**to_hf_config(load_model_config("tiny")))).eval()
    hf.save_pretrained(tmp_path / "released")
    config = _phase(tmp_path, sample_data, "cpt", max_duration="3072tok", data={"max_seq_len": 256},
                    init_from=str(tmp_path / "released"), export_dir=str(tmp_path / "cpt-hf"),
                    schedule={"name": "wsd", "warmup_tokens": 4096})
    _run(config)
    back = AutoModelForMaskedLM.from_pretrained(tmp_path / "cpt-hf").eval()
    # Three steps at warmup LRs 0, 5e-4 and 1e-3: Adam moves each weight by at most about their sum.
    before, after = hf.state_dict(), back.state_dict()
    delta = max((after[k] - before[k]).abs().max().item() for k in before)
    assert 0 < delta < 2e-3
    lineage = torch.load(tmp_path / "cpt" / "latest-rank0.pt", weights_only=False)["state"]["callbacks"]
    assert lineage["RunState"]["lineage"]["init_from"] == str(tmp_path / "released")


def test_a_mismatched_init_from_names_the_tensors(tmp_path, sample_data):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from bertforge.model.config import load_model_config
    from bertforge.model.hf_io import to_hf_config

    hf = ModernBertForMaskedLM(ModernBertConfig(**to_hf_config(load_model_config("tiny", ["hidden_size=128"]))))
    hf.save_pretrained(tmp_path / "other")
    config = _phase(tmp_path, sample_data, "bad", max_duration="1024tok", init_from=str(tmp_path / "other"))
    result = subprocess.run([BERTFORGE, "train", str(config)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "has shape" in result.stderr and "model.embeddings.tok_embeddings.weight" in result.stderr


def test_phase_after_a_missing_file_fails_with_the_path(tmp_path, sample_data):
    config = _phase(tmp_path, sample_data, "orphan", phase={"after": "nowhere.yaml"})
    result = subprocess.run([BERTFORGE, "train", str(config)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "phase.after names 'nowhere.yaml'" in result.stderr


def _tiny_wide():
    from bertforge.model.config import load_model_config

    return load_model_config("tiny", ["hidden_size=384", "intermediate_size=576", "num_hidden_layers=6",
                                      "num_attention_heads=6"])


def test_tiling_fills_a_larger_model_part_by_part():
    from bertforge.model import ModernBertForMaskedLM
    from bertforge.model.config import load_model_config
    from bertforge.model.tiling import tile_state_dict

    torch.manual_seed(0)
    small = ModernBertForMaskedLM(load_model_config("tiny")).state_dict()
    large_model = ModernBertForMaskedLM(_tiny_wide())
    tiled = tile_state_dict(small, 4, large_model.state_dict(), 6, source="tiny")
    large_model.load_state_dict(tiled, strict=False)
    h, big = 256, 384
    qkv, source = tiled["model.layers.5.attn.Wqkv.weight"], small["model.layers.3.attn.Wqkv.weight"]  # 5 * 4 // 6
    assert qkv.shape == (3 * big, big)
    for part in range(3):  # q, k and v each tiled on their own: each starts with the small model's part
        assert torch.equal(qkv[part * big:part * big + h, :h], source[part * h:(part + 1) * h, :h])
        assert torch.equal(qkv[part * big + h:(part + 1) * big, :h], source[part * h:part * h + big - h, :h])
    assert torch.equal(qkv[:h, h:], source[:h, :big - h])  # repeated along the input dimension too
    wi = tiled["model.layers.2.mlp.Wi.weight"]
    assert torch.equal(wi[576:576 + 384, :h], small["model.layers.1.mlp.Wi.weight"][384:768, :h])  # the gate half
    assert torch.equal(tiled["model.layers.1.attn_norm.weight"], torch.ones(big))  # small layer 0 has none
    assert torch.equal(large_model.decoder.weight, large_model.model.embeddings.tok_embeddings.weight)


@pytest.mark.slow
def test_a_larger_model_trains_from_tiled_smaller_weights(tmp_path, sample_data):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    from bertforge.checkpoint.read import load_checkpoint_model
    from bertforge.model.config import load_model_config
    from bertforge.model.hf_io import to_hf_config
    from bertforge.model.tiling import tile_state_dict

    torch.manual_seed(4)
    small = ModernBertForMaskedLM(ModernBertConfig(**to_hf_config(load_model_config("tiny"))))
    small.save_pretrained(tmp_path / "small")
    wide = {"hidden_size": 384, "intermediate_size": 576, "num_hidden_layers": 6, "num_attention_heads": 6}
    config = _phase(tmp_path, sample_data, "wide", max_duration="1024tok", data={"max_seq_len": 256},
                    model=wide, init_from=str(tmp_path / "small"), init_tile=True,
                    schedule={"name": "wsd", "warmup_tokens": 4096})
    _run(config)
    # One step at warmup LR 0: the checkpoint holds exactly the tiled weights.
    trained = load_checkpoint_model(tmp_path / "wide" / "latest-rank0.pt").state_dict()
    from bertforge.model import ModernBertForMaskedLM as Ours

    expected = tile_state_dict(small.state_dict(), 4, Ours(_tiny_wide()).state_dict(), 6, source="small")
    for name, tensor in expected.items():
        assert torch.equal(trained[name], tensor), name


@pytest.mark.parametrize(("name", "init_from"), [("decay-from-released", "checkpoints/modernbert-base/pretrain/"
                                                                          "ep0-ba0000-rank0.pt"),
                                                 ("continue-from-hf", "models/ModernBERT-base")])
def test_shipped_continuation_recipes_resolve_and_plan(name, init_from):
    config = load_train_config(ROOT / f"yamls/continue/{name}.yaml")
    assert config.init_from == init_from and count_parameters(build_on_meta(config.model)) == PUBLISHED["base"]
    # The decay branched from the released stable phase takes its optimizer and needs no warmup; a fresh one warms up.
    assert config.init_optimizer == (name == "decay-from-released")
    assert config.schedule.decays and (config.schedule.warmup_tokens > 0) != config.init_optimizer
    plan = plan_chain(load_chain(ROOT / f"yamls/continue/{name}.yaml"), ranks=8)[-1]
    assert plan.tokens == config.total_tokens
    assert plan.milestones[-1].lr == pytest.approx(config.optimizer.lr * 0.001)


@pytest.mark.parametrize("recipe, tokens, masks, temperatures", [
    ("ettin-150m", [1_700_000_000_000, 250_000_000_000, 100_000_000_000], [0.3] * 3, [None] * 3),
    ("ettin-400m", [1_700_000_000_000, 250_000_000_000, 100_000_000_000], [0.3] * 3, [None] * 3),
    ("mmbert-base", [2_300_000_000_000, 600_000_000_000, 100_000_000_000], [0.3, 0.15, 0.05], [0.7, 0.5, 0.3]),
])
def test_newer_encoder_recipes_plan_their_published_phases(recipe, tokens, masks, temperatures):
    chain = load_chain(ROOT / f"yamls/{recipe}/decay.yaml")
    plans = plan_chain(chain, ranks=8)
    assert [p.tokens for p in plans] == tokens
    assert [p.mask_rate for p in plans] == masks
    assert [c.data.temperature for _, c in chain] == temperatures
    assert [p.max_seq_len for p in plans] == [1024, 8192, 8192]
    if recipe == "mmbert-base":  # languages join by phase: mid-resource in phase 2, low-resource in the decay only
        assert [sorted(c.data.streams) for _, c in chain] == [
            ["code", "english", "high_resource"], ["code", "english", "high_resource", "mid_resource"],
            ["code", "english", "high_resource", "low_resource", "mid_resource"]]
        assert chain[0][1].model.vocab_size == 256000


def test_plan_shows_each_streams_tokens_for_a_temperature_mixture(tmp_path, sample_data):
    from helpers import run_config

    from bertforge.data.mixture import stream_shares
    from bertforge.train.plan import format_plan, plan_phase

    path = run_config(tmp_path, sample_data, "mixed")
    data = yaml.safe_load(path.read_text())
    data["data"]["temperature"] = 0.5
    for stream in data["data"]["streams"].values():
        stream.pop("proportion")
    path.write_text(yaml.safe_dump(data))
    config = load_train_config(path)
    plan = plan_phase(path, config, ranks=1, tokens_before=0, tokens_per_s=None)
    shares = {s.name: s.token_share for s in stream_shares(config.data)}
    assert {row["stream"]: row["token_share"] for row in plan.mixture} == shares
    assert abs(sum(row["tokens"] for row in plan.mixture) - plan.tokens) <= len(shares)
    text = format_plan([plan])
    assert "masking 30% of tokens; mixture by temperature 0.5" in text
    assert all(f"    {name:16} {share:>7.1%}" in text for name, share in shares.items())
