"""One training step (forward + backward + AdamW step) of our ModernBertForMaskedLM against transformers' with
identical weights, on the same documents, in one process, alternating after warm-up.

    python bench/model_step.py --presets tiny base --seq-lens 1024 8192 --json bench/results/model_step_cpu.json

The batch is real: documents drawn one by one from the prepared sample corpus (data/sample/mds, from `bertforge
quickstart` or `bertforge prep data_prep/sample.yaml`), mixture 0.5 code / 0.3 web / 0.2 science, cut at the row
length, 30% masked, about --tokens real tokens. Ours takes them packed
(no padding, sparse prediction); transformers takes the same documents one per row, right-padded to the longest,
its default (SDPA) path, and on a GPU with flash-attn also its flash_attention_2 path. Tokens/s count real
tokens only. Reported: median step time and real tokens/s of each, the ratio, and peak CUDA memory on a GPU
(bench/memory.py measures peak memory on the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bertforge.labels import IGNORE_INDEX
from bertforge.model import ModernBertForMaskedLM, load_model_config


def sample_batch(mds: str, tokenizer: str, seq_len: int, tokens: int, mask_rate: float = 0.3) -> dict:
    """About ``tokens`` real tokens of documents drawn one by one from the shuffled sample mixture (a document
    longer than ``seq_len`` is cut into pieces, as the packer does), masked as in training, concatenated."""
    import numpy as np

    from bertforge.data.config import DataConfig, StreamConfig
    from bertforge.data.loader import PackedMLMLoader
    from bertforge.data.masking import mask_tokens

    streams = {name: StreamConfig(local=f"{mds}/{name}", proportion=p)
               for name, p in (("code", 0.5), ("web", 0.3), ("science", 0.2))}
    loader = PackedMLMLoader(DataConfig(tokenizer=tokenizer, streams=streams, max_seq_len=seq_len,
                                        micro_batch_size=1, mask_rate=mask_rate))
    docs, total = [], 0
    for sample in loader.dataset:
        for start in range(0, len(sample["tokens"]), seq_len):
            piece = sample["tokens"][start:start + seq_len].astype(np.int64)
            docs.append(piece[:tokens - total])
            total += docs[-1].shape[0]
            if total >= tokens:
                break
        if total >= tokens:
            break
    inputs, labels = mask_tokens(np.concatenate(docs), loader.rng, mask_rate, loader.mask_id, loader.special,
                                 loader.pool)
    cu = torch.tensor(np.concatenate([[0], np.cumsum([d.shape[0] for d in docs])]), dtype=torch.int32)
    return {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels), "cu_seqlens": cu,
            "max_seqlen": max(d.shape[0] for d in docs)}


def padded_from_packed(batch: dict) -> dict[str, torch.Tensor]:
    """The same documents as transformers wants them: one document per row, right-padded to the longest."""
    cu = batch["cu_seqlens"].tolist()
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full((len(lengths), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, (a, b) in enumerate(zip(cu, cu[1:])):
        ids[row, :b - a] = batch["input_ids"][a:b]
        labels[row, :b - a] = batch["labels"][a:b]
        mask[row, :b - a] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def hf_twin(ours: ModernBertForMaskedLM, attn_implementation: str):
    """transformers' ModernBertForMaskedLM with our weights (the parameter names are the same)."""
    from transformers import ModernBertConfig
    from transformers import ModernBertForMaskedLM as HFModernBert

    from bertforge.model.hf_io import to_hf_config

    config = ModernBertConfig(**to_hf_config(ours.config), reference_compile=False,
                              attn_implementation=attn_implementation)
    model = HFModernBert(config)
    missing, unexpected = model.load_state_dict(ours.state_dict(), strict=False)
    if unexpected or [k for k in missing if "decoder.weight" not in k]:
        raise RuntimeError(f"weights do not map onto transformers: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model


def hf_attention_paths(device_type: str) -> list[str]:
    """transformers' attention paths to compare with: SDPA, and flash_attention_2 on CUDA where flash-attn is."""
    paths = ["sdpa"]
    if device_type == "cuda":
        try:
            import flash_attn  # noqa: F401
            paths.append("flash_attention_2")
        except ImportError:
            pass
    return paths


def make_step(model, inputs: dict, device: torch.device, dtype: torch.dtype | None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def compare(preset: str, seq_len: int, tokens: int, device: torch.device, dtype: torch.dtype | None,
            warmup: int, iters: int, mds: str, tokenizer: str, hf_paths: list[str]) -> list[dict]:
    batch = sample_batch(mds, tokenizer, seq_len, tokens)
    config = load_model_config(preset)
    torch.manual_seed(0)
    ours = ModernBertForMaskedLM(config).to(device).train()
    sides = {"bertforge (packed)": make_step(ours, batch, device, dtype)}
    padded = padded_from_packed(batch)
    for attn in hf_paths:
        sides[f"transformers ({attn})"] = make_step(hf_twin(ours, attn).to(device).train(), padded, device, dtype)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(warmup + iters):  # alternate, so drifts in clock speed hit every side alike
        for name, step in sides.items():
            seconds = step()
            if i >= warmup:
                times[name].append(seconds)
    peak = {}
    if device.type == "cuda":  # one more step each, measured alone
        for name, step in sides.items():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            step()
            peak[name] = torch.cuda.max_memory_allocated() / 2**30
    real = int(batch["input_ids"].numel())
    docs = int(batch["cu_seqlens"].numel() - 1)
    reference = statistics.median(times["transformers (sdpa)"]) if "transformers (sdpa)" in times else None
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        rows.append({"preset": preset, "seq_len": seq_len, "side": name, "real_tokens": real, "documents": docs,
                     "padded_tokens": int(padded["attention_mask"].numel()), "median_step_s": median,
                     "tokens_per_s": real / median, "vs_transformers_sdpa": reference / median if reference else None,
                     "peak_gib": peak.get(name)})
    return rows


def profile_ours(preset: str, seq_len: int, tokens: int, device: torch.device, mds: str, tokenizer: str) -> None:
    """Where our step's time goes, by operator (self time), after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    batch = sample_batch(mds, tokenizer, seq_len, tokens)
    torch.manual_seed(0)
    step = make_step(ModernBertForMaskedLM(load_model_config(preset)).to(device).train(), batch, device, None)
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[1024, 8192])
    parser.add_argument("--tokens", type=int, default=8192, help="real tokens per step (rows = tokens / seq_len)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bf16 (GPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--mds", default="data/sample/mds")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--profile", action="store_true",
                        help="instead: torch.profiler of our step for the first preset and length, top operators")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not Path(args.mds, "code", "index.json").is_file():
        parser.error(f"no prepared sample corpus under {args.mds}; run `bertforge quickstart` or "
                     f"`bertforge prep data_prep/sample.yaml` first")
    device = torch.device(args.device)
    hf_paths = hf_attention_paths(device.type)
    if args.profile:
        profile_ours(args.presets[0], args.seq_lens[0], args.tokens, device, args.mds, args.tokenizer)
        return
    rows = []
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"device {device} ({where}), "
          f"torch {torch.__version__}, {args.tokens} real tokens per step, median of {args.iters} after {args.warmup}")
    print(f"{'preset':6} {'seq':>5} {'side':28} {'docs':>5} {'padded':>7} {'step s':>8} {'tok/s':>10} {'ratio':>6} "
          f"{'peak GiB':>8}")
    for preset in args.presets:
        for seq_len in args.seq_lens:
            for row in compare(preset, seq_len, args.tokens, device, torch.bfloat16 if args.bf16 else None,
                               args.warmup, args.iters, args.mds, args.tokenizer, hf_paths):
                rows.append(row)
                ratio = f"{row['vs_transformers_sdpa']:.2f}x" if row["vs_transformers_sdpa"] else "-"
                peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-"
                print(f"{preset:6} {seq_len:>5} {row['side']:28} {row['documents']:>5} {row['padded_tokens']:>7} "
                      f"{row['median_step_s']:>8.3f} {row['tokens_per_s']:>10,.0f} {ratio:>6} {peak:>8}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
