"""``diffmix-aug`` command line: demo | train-sdm | synthesize | preview-data."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module in diffmix_aug.commands (see its __init__ for the contract)
COMMANDS: dict[str, str] = {
    "demo": "diffmix_aug.commands.demo",
    "train-sdm": "diffmix_aug.commands.train_sdm",
    "synthesize": "diffmix_aug.commands.synthesize",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmix-aug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
