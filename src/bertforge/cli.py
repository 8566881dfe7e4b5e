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
