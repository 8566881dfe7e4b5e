"""The ``bertforge`` command. Each subcommand's work lives in its feature's module; this file only parses."""

from __future__ import annotations

import argparse
import os
import sys

from bertforge import __version__

DIVERGED_EXIT_CODE = 3
"""`bertforge train` stopped by its divergence guard (2: a bad config or input; 75: stopped by a signal, resume)."""


def _model_info(args: argparse.Namespace) -> None:
    from bertforge.model.report import describe_model

    print(describe_model(args.model, args.overrides))


def _model_init(args: argparse.Namespace) -> None:
    import torch

    from bertforge.model import ModernBertForMaskedLM, load_model_config

    torch.manual_seed(args.seed)
    model = ModernBertForMaskedLM(load_model_config(args.model, args.overrides))
    model.save_pretrained(args.out)
    print(f"wrote a freshly initialised {args.model} model to {args.out}")


def _prep(args: argparse.Namespace) -> None:
    from bertforge.data.prep import Share, prepare, summarize
    from bertforge.data.recipe import load_recipe

    if args.slurm:
        _prep_slurm(args)
        return
    share = None
    if args.share:
        index, _, count = args.share.partition("/")
        share = Share(int(index), int(count))
    results = prepare(load_recipe(args.recipe, args.overrides), progress=not args.no_progress, force=args.force,
                      share=share, work=not args.finish, finish=share is None)
    if share is None:
        print(summarize(results))
    else:
        print(f"share {share.index}/{share.count} prepared; the finishing step writes the sources' indexes")


def _prep_slurm(args: argparse.Namespace) -> None:
    from bertforge.slurm import PrepJob, prepare_prep_job, submit_prep

    job = PrepJob(nodes=args.nodes, tasks_per_node=args.tasks_per_node, partition=args.partition, time=args.time,
                  account=args.account)
    array, finish, what = prepare_prep_job(args.recipe, args.overrides, job, submit=args.submit)
    print(what)
    print(f"saved {array or '(no array job)'} and {finish}")
    if args.submit:
        array_id, finish_id = submit_prep(array, finish)
        print(f"submitted array job {array_id or '(none)'} and finishing job {finish_id}")


def _verify(args: argparse.Namespace) -> None:
    from bertforge.data.integrity import verify
    from bertforge.errors import DataError

    reports = verify(args.folder)
    for report in reports:
        print(f"{report.folder}: {report.shards} shards, {report.samples:,} samples, "
              f"{'OK' if not report.problems else f'{len(report.problems)} problem(s)'}")
        for problem in report.problems:
            print(f"  {problem}")
    bad = sum(len(r.problems) for r in reports)
    if bad:
        raise DataError(f"{args.folder}: {bad} problem(s) found (listed above); prepare the affected sources again "
                        f"(`bertforge prep RECIPE --force`) or restore their shards")


def _eval_mlm(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from bertforge.eval.config import EvalConfig
    from bertforge.eval.mlm import evaluate, load_eval_set

    model_path = Path(args.model)
    if (model_path / "config.json").is_file():
        from bertforge.model import ModernBertForMaskedLM

        model = ModernBertForMaskedLM.from_pretrained(model_path)
    else:
        from bertforge.train.export import load_checkpoint_model

        model = load_checkpoint_model(model_path)
    config = EvalConfig(max_tokens=args.max_tokens, rows=args.rows, mask_rate=args.mask_rate, seed=args.seed)
    seq_len = args.seq_len or model.config.max_position_embeddings
    sets = []
    for dataset in (d.rstrip("/") for d in args.data.split(",") if d):
        parts = dataset.split("/")
        name = parts[-2] if parts[-1] == "eval" and len(parts) > 1 else parts[-1]
        tokenizer = args.tokenizer or _dataset_tokenizer(dataset, model_path)
        sets.append(load_eval_set(name, dataset, tokenizer, config, seq_len, model.config.vocab_size))
    result = evaluate(model, sets)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{'stream':12} {'loss':>8} {'accuracy':>9} {'perplexity':>11} {'predictions':>12}")
    for name, row in [*result["streams"].items(), ("all", result)]:
        print(f"{name:12} {row['loss']:>8.4f} {row['accuracy']:>9.2%} {row['perplexity']:>11.2f} "
              f"{row['predictions']:>12,}")


def _dataset_tokenizer(dataset: str, model_path) -> str:
    """The tokenizer beside an exported model, else the one a prepared dataset (a folder or a URL) records."""
    import json
    from pathlib import Path

    from bertforge.store import RemoteFolder, is_remote

    if (model_path / "tokenizer.json").is_file():
        return str(model_path)
    if is_remote(dataset):
        text = RemoteFolder(dataset).read_text("stats.json")
    else:
        text = (Path(dataset) / "stats.json").read_text() if (Path(dataset) / "stats.json").is_file() else None
    if text and "provenance" in (recorded := json.loads(text)):
        return recorded["provenance"]["tokenizer"]
    from bertforge.schema import ConfigError

    raise ConfigError(f"{dataset}: no tokenizer recorded (no stats.json provenance) and none beside the model; "
                      f"pass --tokenizer")


def _tokenizer_train(args: argparse.Namespace) -> None:
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import recipe_texts
    from bertforge.data.tokenizer import train_tokenizer

    texts = recipe_texts(load_recipe(args.recipe, args.overrides), progress=True)
    out = train_tokenizer(texts, args.vocab_size, args.out)
    print(f"wrote tokenizer to {out}")


def _train(args: argparse.Namespace) -> None:
    from bertforge.train.signals import REQUEUE_EXIT_CODE, record_stop_signals

    record_stop_signals()  # first, before torch is imported: see bertforge.train.signals
    from bertforge.train.config import load_train_config, resolved_yaml

    config = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(resolved_yaml(config), end="")
        return
    downstream = _downstream_tasks(config.downstream)  # before training: a task that cannot load fails now
    from bertforge.train.callbacks.stop_on_signal import StoppedBySignal
    from bertforge.train.run import train

    try:
        print(f"run finished; checkpoints and metrics in {train(config)}")
    except StoppedBySignal as stop:
        print(f"bertforge: {stop}", file=sys.stderr)
        raise SystemExit(REQUEUE_EXIT_CODE) from None
    if downstream and os.environ.get("RANK", "0") == "0":
        from bertforge.finetune.suite import format_table, run_suite

        out = f"{config.save_folder}/downstream"
        print(format_table(run_suite(downstream, config.export_dir, out)), end="")
        print(f"downstream results in {out}/results.json")


def _downstream_tasks(targets: list[str]) -> list:
    """The tasks of a run's ``downstream:`` list, loaded (and so checked) before the run trains."""
    if not targets:
        return []
    from bertforge.finetune.suite import load_suite

    return [task for target in targets for task in load_suite(target)]


def _finetune(args: argparse.Namespace) -> None:
    from pathlib import Path

    from bertforge.finetune.suite import format_table, load_suite, run_suite

    tasks = load_suite(args.tasks_from, args.overrides, args.tasks.split(",") if args.tasks else None, args.seeds)
    out = args.out or str(Path("runs/finetune") / Path(args.model).resolve().name)
    table = run_suite(tasks, args.model, out, tokenizer=args.tokenizer)
    print(format_table(table), end="")
    print(f"results in {out}/results.json and results.md; models in {out}/<task>/seed<N>/model")


def _plan(args: argparse.Namespace) -> None:
    from bertforge.train.phases import load_chain
    from bertforge.train.plan import draw_plan, format_plan, plan_chain, plan_json

    chain = load_chain(args.config, args.overrides)
    plans = plan_chain(chain, args.ranks, args.tokens_per_sec)
    print(plan_json(plans) if args.json else format_plan(plans))
    if args.png:
        draw_plan(chain, plans, args.png, args.ranks)


def _slurm(args: argparse.Namespace) -> None:
    from bertforge.slurm import SlurmJob, prepare_job, submit

    job = SlurmJob(nodes=args.nodes, gpus_per_node=args.gpus_per_node, ranks_per_node=args.ranks_per_node,
                   partition=args.partition, time=args.time, account=args.account,
                   cpus_per_task=args.cpus_per_task, signal_seconds=args.signal_seconds, after=args.after)
    script, text = prepare_job(args.config, args.overrides, job, submit=args.submit)
    print(text, end="")
    print(f"# saved as {script}", file=sys.stderr)
    if args.submit:
        print(f"submitted job {submit(script)}")


def _export(args: argparse.Namespace) -> None:
    from bertforge.train.export import export_checkpoint, export_run

    if args.all:
        rows = export_run(args.checkpoint, args.out, every_tokens=args.every, tokenizer=args.tokenizer)
        print(f"exported {len(rows)} checkpoint(s) to {args.out} (index.json, index.md)")
        return
    if args.every:
        from bertforge.schema import ConfigError

        raise ConfigError("--every needs --all (a run folder)")
    model_config = None
    if args.model:
        from bertforge.model.config import load_model_config

        model_config = load_model_config(args.model)
    print(f"exported to {export_checkpoint(args.checkpoint, args.out, args.tokenizer, model_config)}")


def _quickstart(args: argparse.Namespace) -> None:
    """Sample corpus -> tokenizer -> shards -> a tiny CPU run -> a HuggingFace export; finished steps are skipped."""
    from pathlib import Path

    from bertforge.paths import REPO_ROOT

    recipe = str(REPO_ROOT / "data_prep/sample.yaml")
    if not Path("data/sample/tokenizer/tokenizer.json").is_file():
        _tokenizer_train(argparse.Namespace(recipe=recipe, overrides=[], vocab_size=8192,
                                            out="data/sample/tokenizer"))
    # Prep always runs: it skips the units already made with this tokenizer and length, and (the sample data
    # being the quickstart's own) makes again those made with another.
    _prep(argparse.Namespace(recipe=recipe, overrides=[], no_progress=False, force=True))
    _train(argparse.Namespace(config=str(REPO_ROOT / "yamls/quickstart.yaml"), overrides=args.overrides,
                              print_config=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertforge", description="Pretrain ModernBERT-style encoders: prepare data, train, export.")
    parser.add_argument("--version", action="version", version=f"bertforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    model = commands.add_parser("model", help="inspect or initialise a model preset")
    model_commands = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = model_commands.add_parser("info", help="print a preset's architecture and parameter counts")
    info.add_argument("model", help="preset name (tiny, base, large) or a model YAML file")
    info.add_argument("overrides", nargs="*", help="key=value overrides of the model config")
    info.set_defaults(func=_model_info)
    init = model_commands.add_parser("init", help="write a freshly initialised model as a HuggingFace directory")
    init.add_argument("model", help="preset name (tiny, base, large) or a model YAML file")
    init.add_argument("out", help="output directory")
    init.add_argument("overrides", nargs="*", help="key=value overrides of the model config")
    init.add_argument("--seed", type=int, default=17)
    init.set_defaults(func=_model_init)

    prep = commands.add_parser("prep", help="tokenize a recipe's sources into MDS shards")
    prep.add_argument("recipe", help="data recipe YAML (see data_prep/)")
    prep.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.add_argument("--force", action="store_true",
                      help="prepare again the units made from other inputs, another tokenizer or another max_seq_len "
                           "(default: refuse them)")
    spread = prep.add_argument_group("over a Slurm cluster (an array job, then a finishing step)")
    spread.add_argument("--slurm", action="store_true", help="write the array job's and finishing step's sbatch "
                        "scripts (under the prep's slurm/ folder) instead of preparing here")
    spread.add_argument("--nodes", type=int, default=1, help="nodes' worth of array tasks")
    spread.add_argument("--tasks-per-node", type=int, default=1,
                        help="array tasks per node, each running the recipe's workers")
    spread.add_argument("--partition")
    spread.add_argument("--time", help="time limit of each array task (Slurm syntax)")
    spread.add_argument("--account")
    spread.add_argument("--submit", action="store_true", help="also sbatch them (only the array tasks with "
                        "unfinished units: the same command reruns what a failed task left)")
    spread.add_argument("--share", help=argparse.SUPPRESS)  # INDEX/COUNT: what one array task runs
    spread.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)  # the finishing step
    prep.set_defaults(func=_prep)

    verify = commands.add_parser("verify", help="check a prepared dataset: every shard present, sized and hashed as "
                                                "its index says, sample counts as stats.json says")
    verify.add_argument("folder", help="a prepared source (holding index.json), or a prep's out_dir of sources")
    verify.set_defaults(func=_verify)

    evaluation = commands.add_parser("eval", help="evaluate a model")
    eval_commands = evaluation.add_subparsers(dest="eval_command", metavar="KIND", required=True)
    mlm = eval_commands.add_parser("mlm", help="masked-LM loss, accuracy and perplexity on prepared (held-out) data, "
                                               "the numbers a run's eval: block logs")
    mlm.add_argument("model", help="a HuggingFace ModernBERT directory (ours or transformers') or a checkpoint of ours")
    mlm.add_argument("--data", required=True, help="prepared datasets, comma-separated (e.g. mds/web/eval,mds/code/eval)")
    mlm.add_argument("--max-tokens", type=int, default=1_000_000, help="real tokens per dataset (default 1M)")
    mlm.add_argument("--seq-len", type=int, help="row length (default: the model's max_position_embeddings)")
    mlm.add_argument("--rows", type=int, default=8, help="rows per micro-batch (the result does not depend on it)")
    mlm.add_argument("--mask-rate", type=float, default=0.15)
    mlm.add_argument("--seed", type=int, default=17)
    mlm.add_argument("--tokenizer", help="default: the one beside the model, else the one the data records")
    mlm.add_argument("--json", action="store_true", help="print the result as JSON")
    mlm.set_defaults(func=_eval_mlm)

    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train_tok = tokenizer_commands.add_parser("train", help="train a byte-level BPE on a recipe's sources")
    train_tok.add_argument("recipe", help="data recipe YAML whose sources are the training text")
    train_tok.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    train_tok.add_argument("--vocab-size", type=int, required=True, help="target size, padded to a multiple of 64")
    train_tok.add_argument("--out", required=True, help="output tokenizer directory")
    train_tok.set_defaults(func=_tokenizer_train)

    train = commands.add_parser("train", help="pretrain from a run config")
    train.add_argument("config", help="run config YAML (see yamls/)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, dotted (optimizer.lr=1e-3)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=_train)

    finetune = commands.add_parser(
        "finetune", help="fine-tune a model on a task (a task YAML) or a suite of them (glue), over seeds",
        description="Fine-tune MODEL on each task and seed, keep each seed's best epoch, and write the results table "
                    "(mean and spread over seeds, the average of the main metrics). Rerunning the same command "
                    "skips the seeds already done.")
    finetune.add_argument("tasks_from", metavar="TASKS", help="a task YAML, or a folder of them: a suite under "
                                                               "yamls/finetune/ (glue, glue-large) or your own")
    finetune.add_argument("model", help="a HuggingFace ModernBERT directory, or a training checkpoint (ours or the "
                                        "research repository's; then pass --tokenizer)")
    finetune.add_argument("overrides", nargs="*", help="key=value overrides of every task (train.epochs=1)")
    finetune.add_argument("--tasks", help="comma-separated task names to run from the suite (default: all)")
    finetune.add_argument("--seeds", type=int, help="seeds per task (default: each task's train.seeds)")
    finetune.add_argument("--out", help="output folder (default runs/finetune/<model folder name>)")
    finetune.add_argument("--tokenizer", help="tokenizer directory or hub name (default: the model directory's)")
    finetune.set_defaults(func=_finetune)

    plan = commands.add_parser("plan", help="tokens, steps, batch, LR milestones, checkpoints and time of a phase "
                                            "and the phases before it, without training")
    plan.add_argument("config", help="run config YAML of a phase (its predecessors are followed via phase.after)")
    plan.add_argument("overrides", nargs="*", help="key=value overrides of that phase")
    plan.add_argument("--ranks", type=int, default=8, help="data-parallel ranks the run will use (default 8)")
    plan.add_argument("--tokens-per-sec", type=float, help="throughput for the time estimate (default: the last "
                                                           "run's measured figure in its save_folder)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.add_argument("--png", help="draw LR and batch size against tokens into this PNG")
    plan.set_defaults(func=_plan)

    slurm = commands.add_parser("slurm", help="write (and --submit) the sbatch script of a multi-node run",
                                description="Render slurm/bertforge.sbatch for a run config, save it as "
                                            "<save_folder>/slurm/<run_name>.sbatch, and with --submit check the "
                                            "partition and submit it. Overrides go after the config (or after --).")
    slurm.add_argument("config", help="run config YAML")
    slurm.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    slurm.add_argument("--nodes", type=int, required=True, help="nodes to allocate")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, one rank each (0: CPU nodes)")
    slurm.add_argument("--ranks-per-node", type=int, help="ranks per node (default: GPUs per node, or 1 on CPU)")
    slurm.add_argument("--partition", help="partition (default: the cluster's default)")
    slurm.add_argument("--time", help="time limit, e.g. 24:00:00; the run checkpoints and requeues before it")
    slurm.add_argument("--account", help="account to charge")
    slurm.add_argument("--cpus-per-task", type=int, help="CPUs per rank")
    slurm.add_argument("--signal-seconds", type=int, default=300,
                       help="SIGUSR1 this many seconds before the time limit (default 300)")
    slurm.add_argument("--after", metavar="JOBID", help="start after this job succeeds (the previous phase)")
    slurm.add_argument("--submit", action="store_true", help="check the partition and submit with sbatch")
    slurm.set_defaults(func=_slurm)

    export = commands.add_parser("export", help="export a checkpoint (or with --all every checkpoint of a run) to "
                                                "HuggingFace directories")
    export.add_argument("checkpoint", help="a checkpoint written by bertforge train (.pt, or a sharded directory), a "
                                           "research-repository Composer checkpoint (.pt), or with --all a run folder")
    export.add_argument("out", help="output directory")
    export.add_argument("--tokenizer", help="tokenizer to save beside the model (--all: default the run's)")
    export.add_argument("--all", action="store_true", help="every checkpoint of the run folder, one directory each "
                                                            "(step<N>-tokens<T>) with a model card, and an index")
    export.add_argument("--every", type=int, metavar="TOKENS",
                        help="with --all: only the first checkpoint at or past each multiple of this many tokens")
    export.add_argument("--model", help="architecture (preset or YAML) of a research checkpoint that stores no "
                                        "HuggingFace config")
    export.set_defaults(func=_export)

    quick = commands.add_parser("quickstart", help="sample data, tokenizer, a tiny CPU run and its export")
    quick.add_argument("overrides", nargs="*", help="key=value overrides of yamls/quickstart.yaml")
    quick.set_defaults(func=_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting positional overrides at the first option; accept key=value anywhere, and after --.
    extra = [e for e in extra if e != "--"]
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from bertforge.errors import CheckpointError, DataError, TrainingDiverged
    from bertforge.schema import ConfigError

    try:
        args.func(args)
    except (ConfigError, CheckpointError, DataError, FileNotFoundError) as err:
        print(f"bertforge: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"bertforge: error: {err}", file=sys.stderr)
        return DIVERGED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
