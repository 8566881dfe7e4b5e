"""What a held-out eval costs: one eval of ``max_tokens`` per stream against training on the same tokens, and
with ``--probe``, the frozen-encoder probe's tasks (``eval.probe``) too.

    python bench/eval_cost.py                                   # tiny model, the sample's eval/ splits, CPU
    python bench/eval_cost.py --preset base --max-tokens 20000 --interval-tokens 1000000000
    python bench/eval_cost.py --probe yamls/finetune/sample-syntax.yaml,retrieval/sample-code-search

Both sides run the same packed batches (the eval set's) through the same model in one process, alternating:
the eval side as ``bertforge.eval.mlm.mlm_metrics`` does it (no gradients), the training side as a training step
(forward, backward, AdamW). Reported: seconds of each, their ratio, and the share of training time an eval every
``--interval-tokens`` costs (eval seconds per token x eval tokens / (train seconds per token x interval)); for the
probe, its seconds (embedding every row, fitting, scoring) over the training seconds of an interval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch
from model_step import make_step

from bertforge.eval.config import EvalConfig
from bertforge.eval.mlm import load_eval_set, mlm_metrics
from bertforge.model import ModernBertForMaskedLM, load_model_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--data", default="data/sample/mds/code/eval,data/sample/mds/web/eval,"
                                          "data/sample/mds/science/eval")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--max-tokens", type=int, default=20000, help="per stream, as eval.max_tokens")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--interval-tokens", type=int, default=204800,
                        help="training tokens between evals (the quickstart: 100 steps of 8 x 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probe", default="", help="eval.probe.tasks, comma-separated, timed as the run does them")
    parser.add_argument("--probe-rows", type=int, default=1000, help="eval.probe.max_rows")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    config = load_model_config(args.preset)
    eval_config = EvalConfig(max_tokens=args.max_tokens)
    sets = [load_eval_set(Path(d).parent.name, d, args.tokenizer, eval_config, args.seq_len, config.vocab_size)
            for d in args.data.split(",")]
    tokens = sum(s.tokens for s in sets)
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(config)
    steps = [make_step(model, {"input_ids": b.input_ids, "labels": b.labels, "cu_seqlens": b.cu_seqlens,
                               "max_seqlen": b.max_seqlen}, torch.device("cpu"), None)
             for s in sets for b in s.batches]
    eval_s, train_s = [], []
    for _ in range(args.repeats + 1):  # the first round warms up
        start = time.perf_counter()
        mlm_metrics(model, sets)
        eval_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        for step in steps:
            step()
        train_s.append(time.perf_counter() - start)
    eval_time, train_time = statistics.median(eval_s[1:]), statistics.median(train_s[1:])
    interval_s = train_time / tokens * args.interval_tokens
    share = eval_time / interval_s
    summary = {"preset": args.preset, "eval_tokens": tokens, "eval_s": eval_time, "train_s_same_tokens": train_time,
               "eval_over_train": eval_time / train_time, "interval_tokens": args.interval_tokens,
               "share_of_training_time": share, "threads": torch.get_num_threads()}
    print(f"{args.preset}: one eval of {tokens:,} tokens ({len(sets)} streams) {eval_time:.2f} s; training on the "
          f"same tokens {train_time:.2f} s; ratio {eval_time / train_time:.2f}; an eval every "
          f"{args.interval_tokens:,} training tokens costs {share:.1%} of the training time")
    if args.probe:
        summary["probe"] = probe_cost(model, config, args, interval_s)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


def probe_cost(model, config, args, interval_s: float) -> dict:
    """The probe's tasks loaded as a run loads them, then timed as it runs them (the median of the repeats)."""
    from bertforge.data.tokenizer import load_tokenizer  # noqa: PLC0415 (only with --probe)
    from bertforge.finetune.probe import load_probe_task, run_probes  # noqa: PLC0415
    from bertforge.finetune.suite import load_suite  # noqa: PLC0415

    tokenizer = load_tokenizer(args.tokenizer).backend_tokenizer
    probes = [load_probe_task(task, tokenizer, config.cls_token_id, config.sep_token_id, args.probe_rows)
              for target in args.probe.split(",") for task in load_suite(target)]
    rounds = [run_probes(model, probes, "cpu", contextlib.nullcontext) for _ in range(args.repeats + 1)]
    tasks = {}
    for probe in probes:
        rows = [probe.scored, *([probe.train] if probe.train else [])]
        tasks[probe.name] = {"metric": probe.metric, "score": rounds[-1][probe.name]["score"],
                             "tokens": sum(len(ids) for part in rows for ids in part.ids),
                             "seconds": statistics.median(r[probe.name]["seconds"] for r in rounds[1:])}
    seconds = sum(task["seconds"] for task in tasks.values())
    for name, task in tasks.items():
        print(f"probe {name}: {task['tokens']:,} tokens embedded, {task['seconds']:.2f} s ({task['metric']} "
              f"{100 * task['score']:.1f} for this fresh model)")
    print(f"the probe ({len(tasks)} tasks, {args.probe_rows} rows per split) {seconds:.2f} s: every "
          f"{args.interval_tokens:,} training tokens ({interval_s:,.0f} s of training here) it costs "
          f"{seconds / interval_s:.2%} of the training time")
    return {"tasks": tasks, "seconds": seconds, "rows": args.probe_rows, "share_of_training_time": seconds / interval_s}


if __name__ == "__main__":
    main()
