"""The ``asymmetry`` command line.

Every command lives in the application layer: ``asymmetry/commands.py`` (ask, chat, generate) and one module per
concern in this package (``index``, ``search``, ``experts``, ``router``, ``eval``, ``serve``), each with
``register(subparsers)``. This module assembles them, loads the config and turns :class:`AsymmetryError` into a
one-line message and exit code 2. Heavy third-party libraries (faiss, transformers' models) load when a command
runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from asymmetry import commands, defaults
from asymmetry.cli import eval as eval_cli
from asymmetry.cli import experts as experts_cli
from asymmetry.cli import index as index_cli
from asymmetry.cli import router as router_cli
from asymmetry.cli import search as search_cli
from asymmetry.cli import serve as serve_cli
from asymmetry.config import Config
from asymmetry.errors import AsymmetryError

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = [commands, index_cli, search_cli, experts_cli, router_cli, eval_cli, serve_cli]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asymmetry",
        description="Local retrieval-augmented mixture-of-experts assistant: Wikipedia retrieval, routed LoRA experts "
        "and a sampler where CFG, mirostat and grammars stack. Runs offline on embedded defaults.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $ASYMMETRY_CONFIG or built-ins)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    defaults.ensure_offline()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:  # filter at the handler: some libraries (bm25s) set their
        handler.setLevel(level)  # own loggers to DEBUG on import, which the root logger's level does not stop
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if sys.stdin.isatty():  # Ctrl-C works at a terminal even when launched from a shell that ignores SIGINT (nohup, &)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args.cfg = Config.load(args.config)
        return int(args.func(args) or 0)
    except AsymmetryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
