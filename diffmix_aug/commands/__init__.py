"""CLI subcommands. Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; module-level imports stay light (heavy imports go inside ``run``)."""

from pathlib import Path


def require_config(path: Path, example: str) -> None:
    """Check a ``--config`` path before anything heavy loads.

    Args:
        path: The path given to ``--config``.
        example: A shipped config to point to, relative to the repository (``diffmix_aug/configs/...``).

    Raises:
        FileNotFoundError: ``path`` is not a file; the message names the option, the path and the example.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config {str(path)!r} does not exist (No such file or directory); see {example} "
                                "for a working example")
