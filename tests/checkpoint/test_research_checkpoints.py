"""Interop: the research repository's Composer checkpoints in (init_from, export), and a run's checkpoints out
(export --all, with an index and model cards)."""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import hf_reference_model, padded_batch, read_metrics, run_config, tiny_config, train_ranks

from bertforge.errors import CheckpointError
from bertforge.export.folder import export_checkpoint
from bertforge.model import ModernBertForMaskedLM
from bertforge.model.hf_io import from_hf_config
from bertforge.train.run import load_initial_weights

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def _research_name(name: str) -> str:
    """Our (and transformers') tensor name -> the research repository's."""
    if name.startswith("model.layers."):
        return "model.bert.encoder.layers." + name.removeprefix("model.layers.")
    if name.startswith("model."):
        return "model.bert." + name.removeprefix("model.")
    return "model." + name


def _research_checkpoint(path: Path, hf, *, with_config: bool = True, edit=None) -> Path:
    """A checkpoint in the released layout, written from a transformers model's weights."""
    weights = {_research_name(k): v.clone() for k, v in hf.state_dict().items()}
    if edit:
        edit(weights)
    state = {"model": weights, "optimizers": {"DecoupledAdamW": {"state": {}, "param_groups": []}},
             "timestamp": {"batch": 16000}}
    if with_config:
        state["integrations"] = {"huggingface": {"model": {"config": {"content": hf.config.to_dict()}}}}
    torch.save({"state": state}, path)
    return path


def _logits_equal(ours: ModernBertForMaskedLM, hf) -> None:
    ids, mask = padded_batch([40, 17, 64], hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask.long()).logits
        got = ours.eval()(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=1e-4)


def test_research_checkpoint_exports_with_transformers_logits(tmp_path):
    from transformers import AutoModelForMaskedLM

    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf)
    out = export_checkpoint(checkpoint, tmp_path / "hf")
    _logits_equal(ModernBertForMaskedLM.from_pretrained(out), hf)
    reloaded = AutoModelForMaskedLM.from_pretrained(out, attn_implementation="sdpa").eval()
    ids, mask = padded_batch([30, 12], hf.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask.long()).logits[mask],
                                   hf(input_ids=ids, attention_mask=mask.long()).logits[mask], atol=1e-4, rtol=1e-4)


def test_research_checkpoint_as_init_from_gives_transformers_logits(tmp_path, capsys):
    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf)
    config = from_hf_config(hf.config.to_dict())
    model = ModernBertForMaskedLM(config)
    load_initial_weights(model, SimpleNamespace(init_from=str(checkpoint), init_tile=False, model=config,
                                                init_optimizer=False))
    _logits_equal(model, hf)
    assert "holds optimizer state (DecoupledAdamW); not carried over (init_optimizer: false)" in capsys.readouterr().out


def test_research_checkpoint_without_a_stored_config_takes_the_architecture_given(tmp_path):
    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf, with_config=False)
    with pytest.raises(CheckpointError, match="stores no HuggingFace config; name the architecture"):
        export_checkpoint(checkpoint, tmp_path / "no")
    out = export_checkpoint(checkpoint, tmp_path / "hf", model_config=from_hf_config(hf.config.to_dict()))
    _logits_equal(ModernBertForMaskedLM.from_pretrained(out), hf)


@pytest.mark.parametrize(("edit", "named"), [
    (lambda w: w.pop("model.bert.encoder.layers.1.mlp.Wo.weight"), "missing tensors: model.layers.1.mlp.Wo.weight"),
    (lambda w: w.update({"model.bert.encoder.layers.2.attn.extra.weight": torch.zeros(2)}),
     "unexpected tensors: model.layers.2.attn.extra.weight"),
    (lambda w: w.update({"model.pooler.weight": torch.zeros(2)}),
     "tensors with no place in a ModernBERT: model.pooler.weight"),
])
def test_a_research_checkpoint_with_a_missing_or_extra_tensor_names_it(tmp_path, edit, named):
    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf, edit=edit)
    with pytest.raises(CheckpointError, match=named):
        export_checkpoint(checkpoint, tmp_path / "hf")
    config = from_hf_config(hf.config.to_dict())
    with pytest.raises(CheckpointError, match=named):
        load_initial_weights(ModernBertForMaskedLM(config), SimpleNamespace(
            init_from=str(checkpoint), init_tile=False, model=config, init_optimizer=False))


def _optimizer_checkpoint(path: Path, model_config) -> Path:
    """A research-layout checkpoint with real optimizer state, as the research repository's Composer writes it:
    optimi's StableAdamW after three steps, read through torch's distributed state-dict API (state keyed by
    parameter name, the step count in the param groups), every name in the research layout."""
    from optimi import StableAdamW
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from bertforge.train.optim import param_groups

    torch.manual_seed(0)
    model = ModernBertForMaskedLM(model_config)
    optimizer = StableAdamW(param_groups(model, 1e-5), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, decouple_lr=True,
                            triton=False)
    for _ in range(3):
        for param in model.parameters():
            param.grad = torch.randn_like(param) * 1e-2
        optimizer.step()
    saved = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    saved["state"] = {_research_name(k): v for k, v in saved["state"].items()}
    for group in saved["param_groups"]:
        group["params"] = [_research_name(k) for k in group["params"]]
    weights = {_research_name(k): v for k, v in model.state_dict().items()}
    torch.save({"state": {"model": weights, "optimizers": {"StableAdamW": saved}}}, path)
    return path


def _optimizer_state(folder: Path) -> tuple[dict, list]:
    """The optimizer state (by parameter name) and param groups of a run's checkpoint after its first step,
    monolithic or sharded."""
    checkpoint = folder / "ep0-ba1-rank0.pt"
    if not checkpoint.exists():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(folder / "ep0-ba1", folder / "gathered.pt")
        checkpoint = folder / "gathered.pt"
    (saved,) = torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["optimizers"].values()
    return saved["state"], saved["param_groups"]


@pytest.mark.slow
@pytest.mark.parametrize(("parallelism", "optimizer"), [("ddp", "stableadamw"), ("fsdp2", "adamw")])
def test_init_optimizer_carries_the_research_moments_and_step_over(tmp_path, sample_data, parallelism, optimizer):
    """Two ranks take one step from a research checkpoint's weights, once with its optimizer state carried over
    and once fresh: the gradient is the same, so each carried moment must equal the stored one decayed by the
    step's beta plus the fresh run's moment, for every parameter, and the step count goes on from the stored
    one. StableAdamW (optimi: the step per group, debiased betas) under DDP, and the stored StableAdamW state
    carried into AdamW (torch's layout: the step per parameter) under FSDP2, sharded over the ranks."""
    from bertforge.checkpoint.research import optimizer_moments
    from bertforge.train.config import load_train_config

    runs = {}
    for carried in (True, False):
        name = f"{parallelism}-{'carried' if carried else 'fresh'}"
        config = run_config(tmp_path, sample_data, name, parallelism=parallelism, max_duration="1ba",
                            optimizer={"name": optimizer, "lr": 1e-3}, schedule={"name": "constant"},
                            checkpoint={"interval": "1ba"})
        if not runs:
            model_config = load_train_config(config).model
            research = _optimizer_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", model_config)
        result = train_ranks(config, 2, f"init_from={research}", f"init_optimizer={str(carried).lower()}",
                              launcher="torchrun" if parallelism == "ddp" else "composer")
        assert result.returncode == 0, result.stderr[-3000:]
        expected_note = "moments and step count (3) carried over" if carried else "not carried over"
        assert expected_note in result.stdout
        runs[carried] = _optimizer_state(tmp_path / name)

    stored = optimizer_moments(torch.load(research, weights_only=True)["state"],
                               {n: p.shape for n, p in ModernBertForMaskedLM(model_config).named_parameters()},
                               source="test")
    (carried, carried_groups), (fresh, _) = runs[True], runs[False]
    assert len(carried) == len(stored.exp_avg) > 10
    for fqn, entry in carried.items():
        name = fqn.removeprefix("model.")
        if optimizer == "stableadamw":  # debiased: beta_hat = beta (1 - beta^(t-1)) / (1 - beta^t); fresh: 0
            step = int(carried_groups[0]["step"])
            b1, b2 = (b * (1 - b ** (step - 1)) / (1 - b ** step) for b in (0.9, 0.98))
            want_avg = b1 * stored.exp_avg[name] + (1 - b1) * fresh[fqn]["exp_avg"]
            want_sq = b2 * stored.exp_avg_sq[name] + (1 - b2) * fresh[fqn]["exp_avg_sq"]
        else:  # m = beta m + (1 - beta) g, the fresh run's moment being (1 - beta) g
            step = int(entry["step"])
            want_avg = 0.9 * stored.exp_avg[name] + fresh[fqn]["exp_avg"]
            want_sq = 0.98 * stored.exp_avg_sq[name] + fresh[fqn]["exp_avg_sq"]
        assert step == stored.step + 1 == 4
        torch.testing.assert_close(entry["exp_avg"], want_avg, atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(entry["exp_avg_sq"], want_sq, atol=1e-10, rtol=1e-5)


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda opt: opt.update(state={i: v for i, v in enumerate(opt["state"].values())}),
     "keyed by parameter position, not name"),
    (lambda opt: opt["state"].pop("model.bert.encoder.layers.1.mlp.Wo.weight"),
     "nothing for 1 parameter\\(s\\): model.layers.1.mlp.Wo.weight"),
    (lambda opt: opt["state"].update({"model.bert.pooler.weight": {}}),
     "holds 'model.bert.pooler.weight', which has no place in this model"),
    (lambda opt: opt["state"]["model.bert.final_norm.weight"].pop("exp_avg_sq"), "not the AdamW moments"),
    (lambda opt: opt["state"]["model.bert.final_norm.weight"].update(exp_avg=torch.zeros(3)),
     "has shape \\(3,\\), the model's parameter"),
])
def test_optimizer_state_that_does_not_fit_says_why_and_starts_fresh(tmp_path, capsys, edit, reason):
    config = tiny_config()
    checkpoint = _optimizer_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", config)
    state = torch.load(checkpoint, weights_only=True)
    edit(state["state"]["optimizers"]["StableAdamW"])
    torch.save(state, checkpoint)
    model = ModernBertForMaskedLM(config)
    moments = load_initial_weights(model, SimpleNamespace(init_from=str(checkpoint), init_tile=False, model=config,
                                                          init_optimizer=True))
    assert moments is None
    out = capsys.readouterr().out
    assert re.search(f"init_optimizer: .*{reason}.*; the optimizer starts fresh", out), out


def test_init_optimizer_needs_a_research_checkpoint(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "needs-pt", init_from=str(tmp_path / "hf-dir"), init_optimizer=True)
    result = subprocess.run([BERTFORGE, "train", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "'init_optimizer' takes the optimizer state of a research checkpoint" in result.stderr


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, sample_data) -> Path:
    """A run of 12 steps from a HuggingFace directory (init_from), checkpointed every 4 steps."""
    tmp = tmp_path_factory.mktemp("publish")
    start = tmp / "start"
    subprocess.run([BERTFORGE, "model", "init", "tiny", str(start)], check=True, capture_output=True, timeout=300)
    config = run_config(tmp, sample_data, "published", init_from=str(start))
    subprocess.run([BERTFORGE, "train", str(config)], check=True, capture_output=True, timeout=600)
    return tmp / "published"


@pytest.mark.command("export")
def test_export_all_writes_every_checkpoint_with_an_index_and_model_cards(tmp_path, three_checkpoints):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "all"
    result = subprocess.run([BERTFORGE, "export", str(three_checkpoints), str(out), "--all"], capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    index = json.loads((out / "index.json").read_text())
    metrics = read_metrics(three_checkpoints)
    assert [row["step"] for row in index] == [4, 8, 12]
    for row in index:
        assert row["tokens"] == metrics[row["step"]]["tokens"] and row["train_loss"] == metrics[row["step"]]["loss"]
        assert row["name"] == f"step{row['step']:07d}-tokens{row['tokens']}"
        folder = out / row["name"]
        model = AutoModelForMaskedLM.from_pretrained(folder)
        assert model.config.num_hidden_layers == 4 and (folder / "tokenizer.json").is_file()
        card = (folder / "README.md").read_text()
        assert f"Initial weights from `{three_checkpoints.parent / 'start'}`" in card  # the lineage
        assert f"| tokens seen in this run | {row['tokens']} |" in card and "| code |" in card
    table = (out / "index.md").read_text()
    assert all(f"| {row['name']} | {row['step']} | {row['tokens']} | {row['train_loss']:.4f} |" in table
               for row in index)


def test_export_all_every_n_tokens_keeps_the_first_checkpoint_past_each_multiple(tmp_path, three_checkpoints):
    metrics = read_metrics(three_checkpoints)
    every = metrics[8]["tokens"]  # checkpoints at 4, 8, 12 steps: multiples 0, 1, 1 of it
    result = subprocess.run([BERTFORGE, "export", str(three_checkpoints), str(tmp_path / "some"), "--all",
                             "--every", str(every)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["step"] for row in json.loads((tmp_path / "some" / "index.json").read_text())] == [4, 8]
