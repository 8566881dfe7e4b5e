"""Peak memory of a base-size training step at 8192 tokens per row: ours (packed) against transformers (padded),
and ours with the fused, chunked MLM loss (model.mlm_loss_chunk) against ours with the plain one.

    python bench/memory.py --preset base --seq-len 8192 --tokens 16384
    python bench/memory.py --preset base --seq-len 1024 --tokens 8192 --sides ours ours-fused

Each side runs in a fresh child process (so neither sees the other's allocations): build the model, the same
batch as bench/model_step.py, AdamW, then two full steps. On CPU the figure is the child's peak resident set
(ru_maxrss), and the part of it above what the process held once model, optimizer and batch existed; on CUDA
it is torch's peak allocated memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

SIDES = ("ours", "ours-fused", "transformers")


def rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**30


def child(side: str, preset: str, seq_len: int, tokens: int, device_name: str, mds: str, tokenizer: str,
          limit_gib: float, chunk: int, model_set: list[str]) -> dict:
    import torch

    # A cap on the address space, so a side that needs more fails with an allocation error instead of
    # bringing the machine down; the parent reports it as "more than the cap".
    resource.setrlimit(resource.RLIMIT_AS, (int(limit_gib * 2**30), int(limit_gib * 2**30)))

    from model_step import hf_twin, make_step, padded_from_packed, sample_batch

    from bertforge.model import ModernBertForMaskedLM, load_model_config

    device = torch.device(device_name)
    batch = sample_batch(mds, tokenizer, seq_len, tokens)
    torch.manual_seed(0)
    chunk = chunk if side == "ours-fused" else 0
    ours = ModernBertForMaskedLM(load_model_config(preset, [*model_set, f"mlm_loss_chunk={chunk}"]))
    if side in ("ours", "ours-fused"):
        model, inputs = ours, batch
    else:
        model, inputs = hf_twin(ours, "sdpa"), padded_from_packed(batch)
        del ours
    step = make_step(model.to(device).train(), inputs, device, None)
    step()  # the optimizer state now exists; the second step is the steady state
    before = rss_gib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"side": side, "preset": preset, "model_set": model_set, "mlm_loss_chunk": chunk,
            "seq_len": seq_len, "real_tokens": int(batch["input_ids"].numel()),
            "padded_tokens": int(padded_from_packed(batch)["attention_mask"].numel()),
            "peak_rss_gib": peak_rss, "rss_after_setup_gib": before, "step_rss_gib": peak_rss - before,
            "peak_cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=16384, help="real tokens in the step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mds", default="data/sample/mds")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--limit-gib", type=float, default=20.0, help="address-space cap of each side's process")
    parser.add_argument("--sides", nargs=2, choices=SIDES, default=["ours", "transformers"],
                        help="the two sides to compare (default: ours transformers); the ratio is first / second")
    parser.add_argument("--chunk", type=int, default=4096, help="mlm_loss_chunk of the ours-fused side")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a model config override for both sides (e.g. num_hidden_layers=2, so that the loss's "
                             "share of the step shows on CPU)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.preset, args.seq_len, args.tokens, args.device, args.mds,
                               args.tokenizer, args.limit_gib, args.chunk, args.set)))
        return
    rows = []
    print(f"{args.preset} at {args.seq_len} tokens per row, {args.tokens} real tokens, device {args.device}")
    print(f"{'side':14} {'padded':>7} {'peak RSS GiB':>12} {'step GiB':>9} {'peak CUDA GiB':>13}")
    for side in args.sides:
        result = subprocess.run([sys.executable, __file__, "--child", side, "--preset", args.preset,
                                 "--seq-len", str(args.seq_len), "--tokens", str(args.tokens), "--device",
                                 args.device, "--mds", args.mds, "--tokenizer", args.tokenizer, "--limit-gib",
                                 str(args.limit_gib), "--chunk", str(args.chunk),
                                 *[f"--set={item}" for item in args.set]], capture_output=True, text=True)
        if result.returncode:
            if "alloc" not in result.stderr and "memory" not in result.stderr.lower():
                sys.exit(f"{side} failed:\n{result.stderr[-3000:]}")
            rows.append({"side": side, "exceeded_gib": args.limit_gib})
            print(f"{side:14} did not fit in {args.limit_gib:.0f} GiB (allocation failed)", flush=True)
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        rows.append(row)
        cuda = f"{row['peak_cuda_gib']:.2f}" if row["peak_cuda_gib"] is not None else "-"
        print(f"{side:14} {row['padded_tokens']:>7} {row['peak_rss_gib']:>12.2f} {row['step_rss_gib']:>9.2f} "
              f"{cuda:>13}", flush=True)
    ours, theirs = rows
    if "exceeded_gib" not in ours and "exceeded_gib" not in theirs:
        key = "peak_cuda_gib" if ours["peak_cuda_gib"] is not None else "peak_rss_gib"
        print(f"{args.sides[0]} / {args.sides[1]} peak: {ours[key] / theirs[key]:.2f}; step (above setup): "
              f"{ours['step_rss_gib'] / theirs['step_rss_gib']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
