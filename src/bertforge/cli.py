"""The ``bertforge`` command. Each subcommand's work lives in its feature's module; this file only parses."""

from __future__ import annotations

import argparse
import sys

from bertforge import __version__


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
    from bertforge.data.prep import prepare, summarize
    from bertforge.data.recipe import load_recipe

    print(summarize(prepare(load_recipe(args.recipe, args.overrides), progress=not args.no_progress)))


def _tokenizer_train(args: argparse.Namespace) -> None:
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import plan_units, read_unit
    from bertforge.data.tokenizer import train_tokenizer

    recipe = load_recipe(args.recipe, args.overrides)
    texts = (text for src in recipe.sources for unit in plan_units(src, recipe.files_per_unit)
             for text, _ in read_unit(unit) if text)
    out = train_tokenizer(texts, args.vocab_size, args.out)
    print(f"wrote tokenizer to {out}")


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
    prep.set_defaults(func=_prep)

    tokenizer = commands.add_parser("tokenizer", help="train a tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train_tok = tokenizer_commands.add_parser("train", help="train a byte-level BPE on a recipe's sources")
    train_tok.add_argument("recipe", help="data recipe YAML whose sources are the training text")
    train_tok.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    train_tok.add_argument("--vocab-size", type=int, required=True, help="target size, padded to a multiple of 64")
    train_tok.add_argument("--out", required=True, help="output tokenizer directory")
    train_tok.set_defaults(func=_tokenizer_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bertforge.model.hf_io import CheckpointError
    from bertforge.schema import ConfigError

    try:
        args.func(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"bertforge: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
