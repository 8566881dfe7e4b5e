"""One preflight for every command that launches or plans a run, and configs that load without torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_config

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))
HEAVY = ("torch", "numpy", "composer", "streaming", "transformers")

# (overrides, ranks, what the message must say): each a run that `bertforge train` refuses before it starts.
BAD_RUNS = {
    "batch not divisible by ranks": (["global_batch_size=6"], 4,
                                     "'global_batch_size' (6) must be divisible by the number of ranks (4)"),
    "warmup start not whole micro-batches": (["global_batch_size=8", "data.micro_batch_size=2",
                                              "batch_warmup.start=3", "batch_warmup.tokens=100"], 1,
                                             "'batch_warmup.start' (3) must be a multiple of ranks x "
                                             "data.micro_batch_size (1 x 2 = 2)"),
    "warmup start above the batch": (["data.micro_batch_size=2", "batch_warmup.start=8", "batch_warmup.tokens=100"],
                                     1, "'batch_warmup.start' (8) is larger than 'global_batch_size' (4)"),
    "warmup without micro-batches": (["batch_warmup.start=2", "batch_warmup.tokens=100"], 1,
                                     "batch_warmup needs data.micro_batch_size > 0"),
    "missing data": (["data.streams.code.local=/nowhere/code"], 1,
                     "data.streams.code.local '/nowhere/code' holds no prepared dataset"),
    "tokenizer larger than the model": (["model.vocab_size=1024"], 1,
                                        "has 2048 tokens but model.vocab_size is 1024; set model.vocab_size=2048"),
    "special ids differ": (["model.mask_token_id=7"], 1, "model.mask_token_id is 7 but the tokenizer's [MASK] is 3"),
    "decay without a token duration": (["max_duration=12ba"], 1, "a decaying schedule needs max_duration in tokens"),
    "stableadamw under fsdp2 on CPU": (["parallelism=fsdp2"], 1, "optimizer 'stableadamw' under parallelism 'fsdp2'"),
    "rows longer than the model is meant for": (["model.max_position_embeddings=128"], 1,
                                                "data.max_seq_len (256) is above model.max_position_embeddings (128)"),
}

# (override, what the one-line error must say): values refused when the config is read, by every command.
BAD_VALUES = {
    "optimizer.betas=[0.9]": "in 'optimizer': 'betas' must be two numbers in [0, 1), e.g. [0.9, 0.98], got [0.9]",
    "optimizer.weight_decay=-0.1": "in 'optimizer': 'weight_decay' must be >= 0, got -0.1",
    "data.streams.code.repeat=0": "in 'data.streams.code': 'repeat' must be above 0",
    "data.buffer_docs=0": "in 'data': 'buffer_docs' must be at least 1, got 0",
    "data.doc_batch=0": "in 'data': 'doc_batch' must be at least 1, got 0",
    "checkpoint.keep=0": "in 'checkpoint': 'keep' must be -1 (keep all) or at least 1, got 0",
    "stability.rollback_lr_scale=0": "in 'stability': 'rollback_lr_scale' must be in (0, 1], got 0.0",
}


def _error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("bertforge: error: ")]
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_train_and_slurm_refuse_a_bad_run_with_the_same_message(tmp_path, sample_data, case):
    """`bertforge slurm` runs the trainer's own checks with the job's ranks and device, so nothing is submitted
    that `bertforge train` would refuse (a decaying schedule over batches, StableAdamW with FSDP2 on CPU nodes)."""
    overrides, ranks, expected = BAD_RUNS[case]
    config = run_config(tmp_path, sample_data, "bad")
    env = os.environ | {"WORLD_SIZE": str(ranks)}  # what a launcher tells each rank; train stops before rendezvous
    # Both commands at once (independent processes; CI's two cores start them in about the time of one).
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for command, env in (([BERTFORGE, "train", str(config), *overrides], env),
                                    ([BERTFORGE, "slurm", str(config), "--nodes", str(ranks), "--", *overrides],
                                     None))]
    outputs = [p.communicate(timeout=300) for p in running]
    trained, slurm = (subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(running, outputs))
    assert expected in _error_line(trained)
    assert _error_line(slurm) == _error_line(trained)
    assert not (tmp_path / "bad").exists()  # neither wrote anything: no config.yaml, no script


@pytest.mark.parametrize("override", list(BAD_VALUES))
def test_a_bad_value_is_one_line_naming_file_and_key(tmp_path, sample_data, override):
    config = run_config(tmp_path, sample_data, "values")
    result = subprocess.run([BERTFORGE, "train", str(config), "--print-config", override], capture_output=True,
                            text=True, timeout=120)
    assert _error_line(result).startswith(f"bertforge: error: {config}: {BAD_VALUES[override]}")
    assert "Traceback" not in result.stderr


def test_yaml_syntax_errors_and_empty_recipes_are_one_line(tmp_path):
    broken = tmp_path / "run.yaml"
    broken.write_text("run_name: x\nmodel:\n  hidden_size: [1, 2\ndata: {}\n")
    result = subprocess.run([BERTFORGE, "train", str(broken)], capture_output=True, text=True, timeout=120)
    assert _error_line(result).startswith(f"bertforge: error: {broken}:4:5: not valid YAML (")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("tokenizer: t\nout_dir: o\nsources: []\n")
    for overrides, message in (([], "'sources' is empty"), (["files_per_unit=0", "sources=[{name: a, inputs: "
                                                              "[{format: pydoc_topics}]}]"],
                                                             "'files_per_unit' must be at least 1, got 0")):
        result = subprocess.run([BERTFORGE, "prep", str(recipe), *overrides], capture_output=True, text=True,
                                timeout=120)
        assert message in _error_line(result) and "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_plan_runs_the_preflight_for_its_ranks():
    decay = str(ROOT / "yamls/modernbert-base/decay.yaml")
    odd = subprocess.run([BERTFORGE, "plan", decay, "--ranks", "7"], capture_output=True, text=True, timeout=120)
    assert "'global_batch_size' (4608) must be divisible by the number of ranks (7)" in _error_line(odd)
    none = subprocess.run([BERTFORGE, "plan", decay, "--ranks", "0"], capture_output=True, text=True, timeout=120)
    assert "the number of ranks must be at least 1, got 0" in _error_line(none)


def _shipped_run_configs() -> list[Path]:
    """Every run config under yamls/ (models/ and data/ hold pieces that runs include, as do common.yaml files;
    finetune/ holds fine-tuning tasks)."""
    return sorted(p for p in (ROOT / "yamls").rglob("*.yaml")
                  if p.parent.name not in ("models", "data") and p.name != "common.yaml"
                  and "finetune" not in p.relative_to(ROOT / "yamls").parts)


def test_every_shipped_config_loads_without_torch():
    """Loading configs, planning a chain, and the plan and print-config commands import none of the heavy stack,
    so they answer in well under a second instead of the 10-20 s an import of torch and Composer costs."""
    runs = _shipped_run_configs()
    assert {p.relative_to(ROOT / "yamls").as_posix() for p in runs} >= {
        "quickstart.yaml", *(f"modernbert-{s}/{p}.yaml" for s in ("base", "large")
                             for p in ("pretrain", "extend", "decay"))}
    script = f"""
import contextlib, io, sys
from pathlib import Path
from bertforge.cli import main
from bertforge.data.recipe import load_recipe
from bertforge.model.config import load_model_config
from bertforge.train.phases import load_chain
from bertforge.train.plan import plan_chain
for path in {[str(p) for p in runs]!r}:
    plan_chain(load_chain(path), ranks=8)
for path in sorted(Path({str(ROOT / "yamls/models")!r}).glob("*.yaml")):
    load_model_config(path)
for path in sorted(Path({str(ROOT / "data_prep")!r}).glob("*.yaml")):
    load_recipe(path)
from bertforge.finetune.suite import load_suite
assert len(load_suite("glue")) == len(load_suite("glue-large")) == 8
load_suite({str(ROOT / "yamls/finetune/sample-source.yaml")!r})
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["plan", {str(ROOT / "yamls/modernbert-large/decay.yaml")!r}]) == 0
    assert main(["train", {str(ROOT / "yamls/quickstart.yaml")!r}, "--print-config"]) == 0
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_slurm_renders_a_script_without_importing_torch(tmp_path, sample_data):
    """`bertforge slurm` (without --submit) checks the run, tokenizer included, and writes the script torch-free."""
    config = run_config(tmp_path, sample_data, "light")
    script = f"""
import contextlib, io, sys
from bertforge.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["slurm", {str(config)!r}, "--nodes", "2", "--gpus-per-node", "8", "global_batch_size=16"]) == 0
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"
    assert "--nodes=2" in (tmp_path / "light" / "slurm" / "light.sbatch").read_text()


def test_train_refuses_a_bad_run_before_importing_torch(tmp_path, sample_data):
    """A config that cannot run is refused by `bertforge train` in about a second, not after torch and Composer
    have loaded (about 10 s): the preflight runs first; only the device check waits for torch."""
    config = run_config(tmp_path, sample_data, "light")
    script = f"""
import contextlib, io, sys
from bertforge.cli import main
with contextlib.redirect_stderr(io.StringIO()) as err:
    code = main(["train", {str(config)!r}, "data.streams.code.local=/nowhere/code"])
print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))
print(err.getvalue().strip().splitlines()[-1])
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    status, message = result.stdout.strip().splitlines()
    assert status == "2 []"
    assert "data.streams.code.local '/nowhere/code' holds no prepared dataset" in message
    assert not (tmp_path / "light").exists()


def test_tokenizer_facts_read_without_transformers_match_transformers(sample_data):
    from bertforge.data.tokenizer import load_tokenizer, special_ids, tokenizer_size_and_specials

    tokenizer = load_tokenizer(sample_data["tokenizer"])
    assert tokenizer_size_and_specials(sample_data["tokenizer"]) == (len(tokenizer), special_ids(tokenizer))
