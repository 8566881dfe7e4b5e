"""Loader throughput: packed, masked real tokens per second from local shards, and packing efficiency.

    python bench/data_throughput.py --mds data/sample/mds --tokenizer data/sample/tokenizer

The target is 1M tokens/s from one core, so the loader never starves a GPU (a base model eats ~3e5 tok/s/H100).
"""

from __future__ import annotations

import argparse
import json
import time


def measure(mds: str, tokenizer: str, seq_len: int, rows: int, workers: int, seconds: float) -> dict:
    from streaming.base.util import clean_stale_shared_memory

    from bertforge.data.config import DataConfig, StreamConfig
    from bertforge.data.loader import PackedMLMLoader

    clean_stale_shared_memory()
    streams = {name: StreamConfig(local=f"{mds}/{name}", proportion=p)
               for name, p in (("code", 0.5), ("web", 0.3), ("science", 0.2))}
    loader = PackedMLMLoader(DataConfig(tokenizer=tokenizer, streams=streams, max_seq_len=seq_len,
                                        micro_batch_size=rows, num_workers=workers, buffer_docs=4096))
    real = slots = batches = 0
    start = time.perf_counter()
    first = None
    while time.perf_counter() - start < seconds:
        for batch in loader:
            if first is None:  # exclude start-up (worker spawn, buffer fill) from the rate
                first = time.perf_counter()
                continue
            real, slots, batches = real + batch.num_tokens, slots + batch.num_slots, batches + 1
            if time.perf_counter() - start >= seconds:
                break
    elapsed = time.perf_counter() - first
    del loader
    return {"seq_len": seq_len, "rows": rows, "workers": workers, "batches": batches,
            "tokens_per_s": real / elapsed, "efficiency": real / slots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mds", default="data/sample/mds")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = [measure(args.mds, args.tokenizer, seq_len, rows, workers, args.seconds)
               for seq_len, rows in ((1024, 8), (8192, 1)) for workers in args.workers]
    print(f"{'seq_len':>8} {'rows':>5} {'workers':>8} {'batches':>8} {'tokens/s':>12} {'efficiency':>11}")
    for r in results:
        print(f"{r['seq_len']:>8} {r['rows']:>5} {r['workers']:>8} {r['batches']:>8} {r['tokens_per_s']:>12,.0f} "
              f"{r['efficiency']:>10.2%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
