"""``diffmix-aug`` command line: demo | train-sdm | synthesize | export.

A user error (a missing file, bad YAML, a bad value: ``FileNotFoundError``, ``ValueError``,
``TypeError``, ``yaml.YAMLError``) is printed as one line on stderr with exit code 2; Ctrl-C exits 130
with one line (``train-sdm`` first saves a checkpoint and says how to resume); ``--debug`` shows the
traceback instead. Torch is imported only when a command runs, not for ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module in diffmix_aug.commands (see its __init__ for the contract)
COMMANDS: dict[str, str] = {
    "demo": "diffmix_aug.commands.demo",
    "train-sdm": "diffmix_aug.commands.train_sdm",
    "synthesize": "diffmix_aug.commands.synthesize",
    "export": "diffmix_aug.commands.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffmix-aug",
                                     description="DiffMix nuclei synthesis: demo, SDM training, offline synthesis, HoVer-Net export.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffmix_aug")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [FileNotFoundError, IsADirectoryError, NotADirectoryError,
                                         PermissionError, ValueError, TypeError]
    yaml = sys.modules.get("yaml")  # only when a command has imported it
    if yaml is not None:
        errors.append(yaml.YAMLError)
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"diffmix-aug: {args.command} interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user errors become one line, others keep their traceback
        if args.debug or not isinstance(exc, _user_errors()):
            raise
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"cannot open {exc.filename!r}: {exc.strerror} (check the path given on the command line)"
        else:
            message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"diffmix-aug: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
