"""The ``bertforge`` command. Each subcommand's work lives in its feature's module; this file only parses."""

from __future__ import annotations

import argparse
import sys

from bertforge import __version__
from bertforge.errors import ConfigError, StoppedBySignal, TrainingDiverged
from bertforge.failures import explain
from bertforge.train.signals import REQUEUE_EXIT_CODE

DIVERGED_EXIT_CODE = 3
"""`bertforge train` stopped by its divergence guard (2: a bad config or input; 75: stopped by a signal, resume)."""


def _model_info(args: argparse.Namespace) -> None:
    from bertforge.model.report import describe_model

    print(describe_model(args.model, args.overrides))


def _model_init(args: argparse.Namespace) -> None:
    from bertforge.export.folder import export_fresh_model
    from bertforge.model import load_model_config

    out = export_fresh_model(load_model_config(args.model, args.overrides), args.out, args.seed, args.tokenizer)
    print(f"wrote a freshly initialised {args.model} model to {out}")


def _prep(args: argparse.Namespace) -> None:
    if args.slurm:
        from bertforge.slurm import PrepJob, prepare_prep_job, submit_prep

        job = PrepJob(nodes=args.nodes, tasks_per_node=args.tasks_per_node, partition=args.partition,
                      time=args.time, account=args.account)
        array, finish, what = prepare_prep_job(args.recipe, args.overrides, job, submit=args.submit)
        print(what)
        print(f"saved {array or '(no array job)'} and {finish}")
        if args.submit:
            array_id, finish_id = submit_prep(array, finish)
            print(f"submitted array job {array_id or '(none)'} and finishing job {finish_id}")
        return
    from bertforge.data.prep import Share, prepare, summarize
    from bertforge.data.recipe import load_recipe

    share = Share.parse(args.share) if args.share else None
    results = prepare(load_recipe(args.recipe, args.overrides), progress=not args.no_progress, force=args.force,
                      share=share, work=not args.finish, finish=share is None)
    if share is None:
        print(summarize(results))
    else:
        print(f"share {share.index}/{share.count} prepared; the finishing step writes the sources' indexes")


def _verify(args: argparse.Namespace) -> None:
    from bertforge.data.integrity import format_reports, raise_on_problems, verify_dataset

    reports = verify_dataset(args.folder)
    print(format_reports(reports))
    raise_on_problems(args.folder, reports)


def _eval_mlm(args: argparse.Namespace) -> None:
    import json

    from bertforge.eval.config import EvalConfig
    from bertforge.eval.evaluate import evaluate_model, format_result

    config = EvalConfig(max_tokens=args.max_tokens, rows=args.rows, mask_rate=args.mask_rate, seed=args.seed)
    result = evaluate_model(args.model, args.data.split(","), config, seq_len=args.seq_len, tokenizer=args.tokenizer)
    print(json.dumps(result, indent=1) if args.json else format_result(result))


def _tokenizer_train(args: argparse.Namespace) -> None:
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import recipe_texts
    from bertforge.data.tokenizer import train_tokenizer

    texts = recipe_texts(load_recipe(args.recipe, args.overrides), progress=True)
    print(f"wrote tokenizer to {train_tokenizer(texts, args.vocab_size, args.out)}")


def _train(args: argparse.Namespace) -> None:
    from bertforge.train.signals import record_stop_signals

    record_stop_signals()  # first, before torch is imported: see bertforge.train.signals
    from bertforge.train.config import load_train_config, resolved_yaml

    config = load_train_config(args.config, args.overrides)
    if args.print_config:
        print(resolved_yaml(config), end="")
        return
    from bertforge.finetune.downstream import train_with_downstream

    train_with_downstream(config)


def _finetune(args: argparse.Namespace) -> None:
    from pathlib import Path

    from bertforge.finetune.suite import format_table, load_suite, run_suite

    tasks = load_suite(args.tasks_from, args.overrides, args.tasks.split(",") if args.tasks else None, args.seeds)
    out = args.out or str(Path("runs/finetune") / Path(args.model).resolve().name)
    print(format_table(run_suite(tasks, args.model, out, tokenizer=args.tokenizer)), end="")
    print(f"results in {out}/results.json and results.md; models in {out}/<task>/seed<N>/model")


def _report(args: argparse.Namespace) -> None:
    from bertforge.report.card import make_report

    make_report(args.run, args.tasks.split(",") if args.tasks else None, args.out, overrides=args.overrides,
                per_task=args.set, seeds=args.seeds, every=args.every)


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
    from bertforge.export.folder import export_checkpoint, export_run, fix_tokenizer

    if args.fix_tokenizer:
        if args.out or args.all:
            raise ConfigError("--fix-tokenizer rewrites an exported directory in place: `bertforge export DIR "
                              "--fix-tokenizer`, with no OUT or --all")
        print(f"rewrote the tokenizer configuration of {fix_tokenizer(args.checkpoint)}")
        return
    if not args.out:
        raise ConfigError("export needs OUT, the directory to write (`bertforge export CHECKPOINT OUT`)")
    if args.all:
        rows = export_run(args.checkpoint, args.out, every_tokens=args.every, tokenizer=args.tokenizer)
        print(f"exported {len(rows)} checkpoint(s) to {args.out} (index.json, index.md)")
        return
    if args.every:
        raise ConfigError("--every needs --all (a run folder)")
    from bertforge.model.config import load_model_config

    model_config = load_model_config(args.model) if args.model else None
    print(f"exported to {export_checkpoint(args.checkpoint, args.out, args.tokenizer, model_config)}")


def _average(args: argparse.Namespace) -> None:
    from bertforge.export.average import average, last_checkpoints

    *sources, out = args.paths
    if args.last is not None:
        if len(sources) != 1:
            raise ConfigError("--last K averages the K newest checkpoints of one run: `bertforge average RUN_DIR OUT "
                              "--last K`")
        sources = last_checkpoints(sources[0], args.last)  # each verified once, here
    averaged = average(sources, out, args.tokenizer, verified=args.last is not None)
    print(f"averaged {len(sources)} model(s) into {averaged}")


def _quickstart(args: argparse.Namespace) -> None:
    from bertforge.quickstart import run_quickstart

    print(run_quickstart(args.overrides, small=args.small))


def _add_model(commands) -> None:
    model = commands.add_parser("model", help="inspect or initialise a model preset")
    actions = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="print a preset's architecture and parameter counts")
    info.add_argument("model", help="preset name (tiny, base, large) or a model YAML file")
    info.add_argument("overrides", nargs="*", help="key=value overrides of the model config")
    info.set_defaults(func=_model_info)
    init = actions.add_parser("init", help="write a freshly initialised model as a HuggingFace directory")
    init.add_argument("model", help="preset name (tiny, base, large) or a model YAML file")
    init.add_argument("out", help="output directory")
    init.add_argument("overrides", nargs="*", help="key=value overrides of the model config")
    init.add_argument("--seed", type=int, default=17)
    init.add_argument("--tokenizer", help="tokenizer to save beside the model (a directory or hub name)")
    init.set_defaults(func=_model_init)


def _add_prep(commands) -> None:
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
    spread.add_argument("--nodes", type=_at_least_one, default=1, help="nodes' worth of array tasks")
    spread.add_argument("--tasks-per-node", type=_at_least_one, default=1,
                        help="array tasks per node, each running the recipe's workers")
    spread.add_argument("--partition")
    spread.add_argument("--time", help="time limit of each array task (Slurm syntax)")
    spread.add_argument("--account")
    spread.add_argument("--submit", action="store_true", help="also sbatch them (only the array tasks with "
                        "unfinished units: the same command reruns what a failed task left)")
    spread.add_argument("--share", help=argparse.SUPPRESS)  # INDEX/COUNT: what one array task runs
    spread.add_argument("--finish", action="store_true", help=argparse.SUPPRESS)  # the finishing step
    prep.set_defaults(func=_prep)


def _add_verify(commands) -> None:
    verify = commands.add_parser("verify", help="check a prepared dataset: every shard present, sized and hashed as "
                                                "its index says, sample counts as stats.json says")
    verify.add_argument("folder", help="a prepared source (holding index.json), or a prep's out_dir of sources")
    verify.set_defaults(func=_verify)


def _add_eval(commands) -> None:
    evaluation = commands.add_parser("eval", help="evaluate a model")
    kinds = evaluation.add_subparsers(dest="eval_command", metavar="KIND", required=True)
    mlm = kinds.add_parser("mlm", help="masked-LM loss, accuracy and perplexity on prepared (held-out) data, "
                                       "the numbers a run's eval: block logs")
    mlm.add_argument("model", help="a HuggingFace ModernBERT directory (ours or transformers') or a checkpoint of ours")
    mlm.add_argument("--data", required=True,
                     help="prepared datasets, comma-separated (e.g. mds/web/eval,mds/code/eval)")
    mlm.add_argument("--max-tokens", type=_at_least_one, default=1_000_000, help="real tokens per dataset (default 1M)")
    mlm.add_argument("--seq-len", type=int, help="row length (default: the model's max_position_embeddings)")
    mlm.add_argument("--rows", type=_at_least_one, default=8,
                     help="rows per micro-batch (the result does not depend on it)")
    mlm.add_argument("--mask-rate", type=float, default=0.15)
    mlm.add_argument("--seed", type=int, default=17)
    mlm.add_argument("--tokenizer", help="default: the one beside the model, else the one the data records")
    mlm.add_argument("--json", action="store_true", help="print the result as JSON")
    mlm.set_defaults(func=_eval_mlm)


def _add_tokenizer(commands) -> None:
    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer")
    actions = tokenizer.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="train a byte-level BPE on a recipe's sources")
    train.add_argument("recipe", help="data recipe YAML whose sources are the training text")
    train.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    train.add_argument("--vocab-size", type=int, required=True, help="target size, padded to a multiple of 64")
    train.add_argument("--out", required=True, help="output tokenizer directory")
    train.set_defaults(func=_tokenizer_train)


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="pretrain from a run config")
    train.add_argument("config", help="run config YAML (see yamls/)")
    train.add_argument("overrides", nargs="*", help="key=value overrides, dotted (optimizer.lr=1e-3)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=_train)


def _add_finetune(commands) -> None:
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
    finetune.add_argument("--seeds", type=_at_least_one, help="seeds per task (default: each task's train.seeds)")
    finetune.add_argument("--out", help="output folder (default runs/finetune/<model folder name>)")
    finetune.add_argument("--tokenizer", help="tokenizer directory or hub name (default: the model directory's)")
    finetune.set_defaults(func=_finetune)


def _add_plan(commands) -> None:
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


def _add_slurm(commands) -> None:
    slurm = commands.add_parser("slurm", help="write (and --submit) the sbatch script of a multi-node run",
                                description="Render slurm/bertforge.sbatch for a run config, save it as "
                                            "<save_folder>/slurm/<run_name>.sbatch, and with --submit check the "
                                            "partition and submit it. Overrides go after the config (or after --).")
    slurm.add_argument("config", help="run config YAML")
    slurm.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    slurm.add_argument("--nodes", type=_at_least_one, required=True, help="nodes to allocate")
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


def _add_export(commands) -> None:
    export = commands.add_parser("export", help="export a checkpoint (or with --all every checkpoint of a run) to "
                                                "HuggingFace directories")
    export.add_argument("checkpoint", help="a checkpoint written by bertforge train (.pt, or a sharded directory), a "
                                           "research-repository Composer checkpoint (.pt), or with --all a run folder")
    export.add_argument("out", nargs="?", help="output directory")
    export.add_argument("--tokenizer", help="tokenizer to save beside the model (--all: default the run's)")
    export.add_argument("--all", action="store_true", help="every checkpoint of the run folder, one directory each "
                                                            "(step<N>-tokens<T>) with a model card, and an index")
    export.add_argument("--every", type=_at_least_one, metavar="TOKENS",
                        help="with --all: only the first checkpoint at or past each multiple of this many tokens")
    export.add_argument("--model", help="architecture (preset or YAML) of a research checkpoint that stores no "
                                        "HuggingFace config")
    export.add_argument("--fix-tokenizer", action="store_true", help="rewrite, in place, the tokenizer configuration "
                        "of a directory exported by an earlier bertforge (so AutoModel and sentence-transformers "
                        "take its inputs)")
    export.set_defaults(func=_export)


def _add_average(commands) -> None:
    average = commands.add_parser("average", help="the mean of several checkpoints' weights, as a HuggingFace "
                                                  "directory (checkpoint averaging)")
    average.add_argument("paths", nargs="+", metavar="SOURCE... OUT", help="checkpoints (ours or the research "
                         "repository's) or HuggingFace directories of one architecture, then the output directory; "
                         "with --last, one run folder, then the output directory")
    average.add_argument("--last", type=_at_least_one, metavar="K",
                         help="the K newest checkpoints of the run folder that verify")
    average.add_argument("--tokenizer", help="tokenizer to save beside it (default: the one the first source records)")
    average.set_defaults(func=_average)


def _add_quickstart(commands) -> None:
    quick = commands.add_parser("quickstart", help="sample data, tokenizer, a tiny CPU run and its export",
                                description="The built-in sample corpus, a tokenizer trained on it, its shards, a "
                                            "tiny CPU pretraining run and its HuggingFace export, then a summary. "
                                            "Run again, it skips what is done.")
    quick.add_argument("overrides", nargs="*", help="key=value overrides of yamls/quickstart.yaml")
    quick.add_argument("--small", action="store_true", help="a slice of the corpus and 60k training tokens, into "
                       "data/sample-small and runs/quickstart-small: the whole pipeline in about a minute")
    quick.set_defaults(func=_quickstart)


def _at_least_one(text: str) -> int:
    """A count given on the command line (seeds, tokens, nodes): a whole number of at least 1, or argparse's one
    line (0 or a negative number was taken as "all" by some commands, or failed far from the flag)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Flags and positionals in any order (``export RUN --all OUT`` as ``export --all RUN OUT``): a subcommand's
    parser reads its arguments as argparse's intermixed parsing does, which plain parsing does not for an optional
    positional after a flag. Parsers with subcommands parse as usual (intermixed parsing refuses them); every
    subcommand parser is of this class too (add_parser makes its parent's class)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args itself, twice
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report", help="a run's report card: every checkpoint and a fresh model, held-out MLM and fine-tuned tasks",
        description="Score a fresh model of the run's config and each checkpoint of the run: held-out MLM loss and "
                    "accuracy, and each task fine-tuned over its seeds. Writes report.json, report.md and "
                    "report.png; a rerun skips what is done.")
    report.add_argument("run", help="a run's save_folder (local, or s3://...)")
    report.add_argument("overrides", nargs="*", help="key=value overrides of every task (train.epochs=1)")
    report.add_argument("--tasks", help="comma-separated task YAMLs or suites (default: the run config's "
                                        "downstream: list; none: held-out MLM only)")
    report.add_argument("--set", action="append", default=[], metavar="TASK:KEY=VALUE",
                        help="an override of one task (repeat)")
    report.add_argument("--seeds", type=_at_least_one, help="seeds per task (default: each task's train.seeds)")
    report.add_argument("--every", type=_at_least_one, metavar="TOKENS",
                        help="only the first checkpoint at or past each multiple of this many tokens")
    report.add_argument("--out", help="output folder (default: RUN/report, or runs/report/<name> for a run in "
                                      "an object store)")
    report.set_defaults(func=_report)


def _env(args: argparse.Namespace) -> None:
    import json

    from bertforge.environment import collect, format_report

    report = collect()
    print(json.dumps(report, indent=1) if args.json else format_report(report).rstrip("\n"))


def _add_env(commands) -> None:
    env = commands.add_parser("env", help="versions and hardware for a bug report (torch, CUDA, Composer, "
                                          "streaming, flash-attn, GPUs, Slurm)")
    env.add_argument("--json", action="store_true", help="print JSON for a machine")
    env.set_defaults(func=_env)


COMMANDS = (_add_model, _add_prep, _add_verify, _add_eval, _add_tokenizer, _add_train, _add_finetune, _add_plan,
            _add_slurm, _add_export, _add_average, _add_report, _add_quickstart, _add_env)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bertforge",
                                     description="Pretrain ModernBERT-style encoders: prepare data, train, export.")
    parser.add_argument("--version", action="version", version=f"bertforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # key=value overrides anywhere, and after --: the parsers intermix (_Parser)
    try:
        args.func(args)
    except TrainingDiverged as err:
        print(f"bertforge: error: {err}", file=sys.stderr)
        return DIVERGED_EXIT_CODE
    except StoppedBySignal as stop:
        print(f"bertforge: {stop}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except Exception as err:  # a known failure is one line (failures.explain); anything else is a bug
        message = explain(err)
        if message is None:
            raise
        print(f"bertforge: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
