"""One-shot GPU benchmark: attention backends, model steps against transformers, and training tokens/s and MFU.

    bash bench/gpu.sh                    # on one GPU, a few minutes; writes bench/results/gpu.json
    bash bench/gpu.sh --dry-run          # the same code on CPU at tiny sizes (CI runs this)

It needs only torch and transformers (with their own dependencies) and this checkout's src/ on PYTHONPATH, which
bench/gpu.sh sets: no Composer, no streaming, no prepared data, so it runs on a GPU machine with another torch
release and nothing of ours installed. Sections, each written to the JSON as soon as it is done (a run cut short
keeps what it finished), each side in a try so one failing backend is reported, not fatal:

1. environment: device, torch, transformers, triton, flash-attn.
2. checks: logits of our backends against ``sdpa`` on one batch, float32 and bf16, on the device.
3. model_step: one training step (forward, backward, AdamW) of base at 1024 and 8192 tokens per row in bf16
   autocast: ours packed with each backend (flex, sdpa, and flash where installed) against transformers' SDPA (and
   flash_attention_2 where installed) on the same documents, one per row and right-padded; median step time, real
   tokens/s, the ratio to transformers' SDPA, peak CUDA memory of each side run alone.
4. train_step: base at 1024 with the published micro-batch (96 full rows of packed documents): real tokens/s and
   MFU (FLOPs per token as a training run logs them), eager and torch.compile.

Documents are synthetic: lengths drawn from a log-normal with median seq_len / 4 (sigma 1), cut into pieces of at
most seq_len as the packer cuts them; token ids uniform over the vocabulary, 30% of positions predicted. Step
cost depends on lengths, not on which ids they hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from model_step import hf_attention_paths, hf_twin, make_step, padded_from_packed

from bertforge.model import ModernBertConfig, ModernBertForMaskedLM
from bertforge.model.attention import flash_varlen
from bertforge.model.flops import device_peak_flops, flops_per_token

ROOT = Path(__file__).resolve().parents[1]
MASK_RATE = 0.3
# What the benchmark must run without: if any of these is imported, the GPU machine could not run it.
NOT_NEEDED = ("composer", "streaming", "omegaconf", "optimi", "wandb", "datasets")


@dataclasses.dataclass
class Plan:
    device: str
    preset: str
    seq_lens: list[int]
    step_tokens: dict[int, int]
    """Real tokens per model_step at each row length."""
    train_rows: int
    train_seq_len: int
    warmup: int
    iters: int
    compile: bool


# At 8192 transformers' SDPA path holds (rows x heads x 8192 x 8192) attention weights per layer: 32768 real tokens
# (11 documents) did not fit an H200's 139 GiB, so that length is measured on 8192 real tokens.
GPU_PLAN = Plan(device="cuda", preset="base", seq_lens=[1024, 8192], step_tokens={1024: 32768, 8192: 8192},
                train_rows=96, train_seq_len=1024, warmup=3, iters=10, compile=True)
DRY_PLAN = Plan(device="cpu", preset="tiny", seq_lens=[128, 512], step_tokens={128: 1024, 512: 1024},
                train_rows=4, train_seq_len=256, warmup=1, iters=2, compile=False)


def preset_config(name: str, **overrides) -> ModernBertConfig:
    """A model preset read with plain YAML (the config loader's OmegaConf may be absent on a GPU machine)."""
    fields = yaml.safe_load((ROOT / "yamls" / "models" / f"{name}.yaml").read_text())
    return ModernBertConfig(**{**fields, **overrides})


def document_lengths(total: int, seq_len: int, generator: torch.Generator) -> list[int]:
    """Pieces of synthetic documents, at most ``seq_len`` each, adding up to exactly ``total`` tokens."""
    lengths: list[int] = []
    remaining = total
    while remaining:
        doc = min(remaining, max(8, int(math.exp(math.log(seq_len / 4) + torch.randn((), generator=generator).item()))))
        remaining -= doc
        lengths += [seq_len] * (doc // seq_len) + ([doc % seq_len] if doc % seq_len else [])
    return lengths


def packed_batch(lengths: list[int], vocab: int, generator: torch.Generator) -> dict:
    total = sum(lengths)
    ids = torch.randint(5, vocab, (total,), generator=generator)
    labels = torch.where(torch.rand(total, generator=generator) < MASK_RATE, ids, -100)
    cu = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)
    # As the training loader does: the labelled positions padded with -1 to a multiple of 128, so that a compiled
    # step meets no data-dependent size.
    kept = (labels != -100).nonzero().squeeze(1)
    return {"input_ids": ids, "labels": labels, "cu_seqlens": cu, "max_seqlen": max(lengths),
            "prediction_index": F.pad(kept, (0, -kept.shape[0] % 128), value=-1)}


def full_rows(rows: int, seq_len: int, generator: torch.Generator) -> list[int]:
    """Documents laid into ``rows`` rows of exactly ``seq_len`` tokens, a document cut where a row ends."""
    return [piece for _ in range(rows) for piece in document_lengths(seq_len, seq_len, generator)]


def our_backends(device: str) -> list[str]:
    backends = ["flex", "sdpa"]
    if device == "cuda" and flash_varlen is not None:
        backends.insert(0, "flash")
    return backends


def our_model(config: ModernBertConfig, backend: str, device: str) -> ModernBertForMaskedLM:
    torch.manual_seed(0)  # every side starts from the same weights
    return ModernBertForMaskedLM(dataclasses.replace(config, attention_backend=backend)).to(device).train()


def measure(model, inputs: dict, plan: Plan, real_tokens: int) -> dict:
    """Median step time after warm-up, and the peak CUDA memory of this side alone."""
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    # bf16 autocast as a GPU run trains; the CPU dry run checks the code in float32, since CPUs without bf16
    # matrix units emulate it (8.7 s a step for the tiny model at 1,024 tokens, against 0.37 s in float32).
    step = make_step(model, inputs, device, torch.bfloat16 if device.type == "cuda" else None)
    times = [step() for _ in range(plan.warmup + plan.iters)][plan.warmup:]
    median = statistics.median(times)
    return {"median_step_s": median, "tokens_per_s": real_tokens / median,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def guarded(row: dict, work, *args) -> dict:
    """``work(*args)`` for one side; an exception is recorded in the row (with its last lines) instead of ending
    the benchmark."""
    try:
        row.update(work(*args))
    except Exception as error:  # noqa: BLE001 - a benchmark reports every failure and goes on
        row["error"] = f"{type(error).__name__}: {error}"[:500]
        row["traceback"] = traceback.format_exc()[-2000:]
        print(f"  {row.get('side', '')} failed: {row['error']}", flush=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def environment(plan: Plan) -> dict:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": plan.device,
            "flash_attn": flash_varlen is not None, "python": sys.version.split()[0]}
    if plan.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                    cuda=torch.version.cuda, peak_bf16_flops=device_peak_flops(None))
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    return info


def checks(plan: Plan) -> list[dict]:
    """Each backend's logits against sdpa's on one batch of mixed lengths, in float32 and in bf16."""
    config = preset_config("tiny", local_attention=128)
    generator = torch.Generator().manual_seed(1)
    batch = packed_batch([300, 17, 129, 1, 1500, 40, 900], config.vocab_size, generator)
    inputs = {k: v.to(plan.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "labels"}
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        logits = {}
        for backend in our_backends(plan.device):
            if backend == "flash" and dtype == torch.float32:
                continue  # flash-attn has no float32 kernel
            model = our_model(config, backend, plan.device).eval()
            with torch.no_grad(), torch.autocast(plan.device, dtype=dtype, enabled=dtype != torch.float32):
                logits[backend] = model(**inputs).logits.float()
        for backend, value in logits.items():
            if backend != "sdpa":
                diff = (value - logits["sdpa"]).abs()
                rows.append({"backend": backend, "against": "sdpa", "dtype": str(dtype).removeprefix("torch."),
                             "max_abs_diff": diff.max().item(), "logit_std": logits["sdpa"].std().item()})
    return rows


def model_steps(plan: Plan) -> list[dict]:
    rows = []
    for seq_len in plan.seq_lens:
        config = preset_config(plan.preset)
        generator = torch.Generator().manual_seed(seq_len)
        lengths = document_lengths(plan.step_tokens[seq_len], seq_len, generator)
        batch = packed_batch(lengths, config.vocab_size, generator)
        padded = padded_from_packed(batch)
        real = sum(lengths)
        common = {"preset": plan.preset, "seq_len": seq_len, "real_tokens": real, "documents": len(lengths),
                  "padded_tokens": int(padded["attention_mask"].numel())}
        for backend in our_backends(plan.device):
            rows.append(guarded({**common, "side": f"bertforge {backend} (packed)"}, _ours_step, config, backend,
                                batch, plan, real))
        for attn in hf_attention_paths(plan.device):
            rows.append(guarded({**common, "side": f"transformers {attn} (padded)"}, _transformers_step, config, attn,
                                padded, plan, real))
        reference = next((r["median_step_s"] for r in rows if r["seq_len"] == seq_len
                          and r["side"] == "transformers sdpa (padded)" and "median_step_s" in r), None)
        for row in rows:
            if row["seq_len"] == seq_len and "median_step_s" in row and reference:
                row["vs_transformers_sdpa"] = reference / row["median_step_s"]
            if row["seq_len"] == seq_len:
                print(_row_line(row), flush=True)
    return rows


def _ours_step(config: ModernBertConfig, backend: str, batch: dict, plan: Plan, real: int,
               compiled: bool = False) -> dict:
    model = our_model(config, backend, plan.device)
    return measure(torch.compile(model) if compiled else model, batch, plan, real)


def _transformers_step(config: ModernBertConfig, attn: str, padded: dict, plan: Plan, real: int) -> dict:
    return measure(hf_twin(our_model(config, "sdpa", "cpu"), attn).to(plan.device).train(), padded, plan, real)


def train_steps(plan: Plan) -> list[dict]:
    config = preset_config(plan.preset)
    generator = torch.Generator().manual_seed(17)
    lengths = full_rows(plan.train_rows, plan.train_seq_len, generator)
    batch = packed_batch(lengths, config.vocab_size, generator)
    real = sum(lengths)
    per_token = flops_per_token(config, real / len(lengths), MASK_RATE)
    peak = device_peak_flops(None) if plan.device == "cuda" else None
    rows = []
    variants = [(b, False) for b in our_backends(plan.device)]
    if plan.compile:  # last: a compile that fails or drags on leaves the eager figures already written
        variants.append(("flash" if "flash" in our_backends(plan.device) else "flex", True))
    for backend, compiled in variants:
        row = guarded({"preset": plan.preset, "seq_len": plan.train_seq_len, "rows": plan.train_rows,
                       "real_tokens": real, "documents": len(lengths), "mean_doc_len": real / len(lengths),
                       "flops_per_token": per_token, "side": f"bertforge {backend}" + (" compiled" if compiled
                                                                                      else " eager")},
                      _ours_step, config, backend, batch, plan, real, compiled)
        if "tokens_per_s" in row:
            row["mfu"] = per_token * row["tokens_per_s"] / peak if peak else None
        rows.append(row)
        print(_row_line(row), flush=True)
    return rows


def _row_line(row: dict) -> str:
    if "error" in row:
        return f"{row['side']:34} error: {row['error'][:120]}"
    ratio = f"{row['vs_transformers_sdpa']:.2f}x" if row.get("vs_transformers_sdpa") else "-"
    peak = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "-"
    mfu = f" MFU {row['mfu']:.1%}" if row.get("mfu") is not None else ""
    return (f"{row['seq_len']:>5} {row['side']:34} {row['real_tokens']:>7} real/{row.get('padded_tokens', '-')} "
            f"step {row['median_step_s']:.4f}s {row['tokens_per_s']:>12,.0f} tok/s {ratio:>6} peak {peak} GiB{mfu}")


SECTIONS = {"checks": checks, "model_step": model_steps, "train_step": train_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code, measures nothing")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile train step")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; use --dry-run to check the code on CPU")
    plan.compile = plan.compile and not args.no_compile
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {"plan": dataclasses.asdict(plan), "environment": environment(plan)}
    print(json.dumps(report["environment"]), flush=True)
    start = time.perf_counter()
    for name in args.sections:
        section = SECTIONS[name]
        print(f"== {name}", flush=True)
        report[name] = section(plan)
        report["seconds"] = time.perf_counter() - start
        report["imported_but_not_needed"] = sorted(m for m in NOT_NEEDED if m in sys.modules)
        out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out} after {report['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
