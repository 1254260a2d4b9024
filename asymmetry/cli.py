"""The ``asymmetry`` command line.

Each subpackage contributes its own subcommands through ``<package>/cli.py:register(subparsers)``; this module only
assembles them, loads the config and turns :class:`AsymmetryError` into a one-line message and exit code 2.
Heavy imports (torch, transformers, faiss) happen inside the handlers, so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from asymmetry.errors import AsymmetryError

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = [
    "asymmetry.commands",
    "asymmetry.index.cli",
    "asymmetry.retrieval.cli",
    "asymmetry.sampling.cli",
    "asymmetry.experts.cli",
    "asymmetry.router.cli",
    "asymmetry.eval.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asymmetry",
        description="Local retrieval-augmented mixture-of-experts assistant: Wikipedia retrieval, routed LoRA experts "
        "and a sampler where CFG, mirostat and grammars stack. Runs offline on embedded defaults.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $ASYMMETRY_CONFIG or built-ins)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that subpackage has no commands (yet)
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
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
        from asymmetry.config import Config

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
