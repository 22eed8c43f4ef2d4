"""CLI subcommands. Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; module-level imports stay light (heavy imports go inside ``run``)."""
