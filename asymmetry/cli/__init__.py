"""The ``asymmetry`` command line.

Every command lives in the application layer: ``asymmetry/commands.py`` (ask, chat, generate) and one module per
concern in this package (``index``, ``search``, ``experts``, ``router``, ``eval``, ``serve``), each with
``register(subparsers)``. This module assembles them, loads the config and turns :class:`AsymmetryError` into a
one-line message and exit code 2. Heavy third-party libraries (faiss, transformers' models) load when a command
runs.

Last line of defence: any other exception becomes one line naming the command and the error, with the full traceback
written to ``$ASYMMETRY_HOME/logs/`` (exit 1). A write that fails for lack of space or permission is a clear error
(exit 2) naming the file. A file size limit (``ulimit -f``) raises an error instead of killing the process
(SIGXFSZ is ignored).

A quiet terminal: without ``--verbose`` the commands show our own log lines, warnings (``warning: ...``) and progress
bars for long steps, and nothing of third-party libraries below an error (their progress bars, warnings and log
lines). ``--verbose`` (before or after the command) shows everything, and our INFO lines.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

from asymmetry import commands, defaults
from asymmetry.atomic import write_error
from asymmetry.cli import cache as cache_cli
from asymmetry.cli import eval as eval_cli
from asymmetry.cli import experts as experts_cli
from asymmetry.cli import index as index_cli
from asymmetry.cli import router as router_cli
from asymmetry.cli import search as search_cli
from asymmetry.cli import serve as serve_cli
from asymmetry.config import Config
from asymmetry.errors import AsymmetryError

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES = [commands, index_cli, search_cli, experts_cli, router_cli, eval_cli, serve_cli, cache_cli]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asymmetry",
        description="Local retrieval-augmented mixture-of-experts assistant: Wikipedia retrieval, routed LoRA experts "
        "and a sampler where CFG, mirostat and grammars stack. Runs offline on embedded defaults.",
        epilog="Exit codes: 0 done, 1 nothing to show (e.g. no index yet) or an unexpected error (one line; its "
        "traceback is logged in $ASYMMETRY_HOME/logs/), 2 a problem with the input, the config or a damaged file (one line naming the fix), "
        "130 interrupted.",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (default: $ASYMMETRY_CONFIG or built-ins)")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None, help=QUANTIZE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    _add_shared_options(sub)
    return parser


VERBOSE_HELP = "log progress details, and show third-party libraries' progress bars, warnings and log lines"
QUANTIZE_CHOICES = ("none", "int8", "int4", "auto")
QUANTIZE_HELP = ("CPU weight-only linears of the bases: none (float), int8, int4 (torch's kernels; LoRA still per row) "
                 "or auto (bases of 1B+ parameters: int4 from a mostly 4-bit GGUF, else int8; smaller ones "
                 "float); overrides [experts] quantize")
MODEL_COMMANDS = {"ask", "chat", "generate", "mc", "qa", "serve"}  # the commands that load a base model


def _add_shared_options(sub: argparse._SubParsersAction) -> None:
    """``-v/--verbose`` after the command too (``asymmetry ask Q --verbose``), on every subcommand down to the leaves,
    and ``--quantize`` on those that load a model; SUPPRESS keeps the top-level value when one is not given there."""
    for name, parser in sub.choices.items():
        flags = {flag for action in parser._actions for flag in action.option_strings}
        if "--verbose" not in flags:
            parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        if name in MODEL_COMMANDS and "--quantize" not in flags:
            parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=argparse.SUPPRESS, help=QUANTIZE_HELP)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _add_shared_options(action)


def main(argv: list[str] | None = None) -> int:
    defaults.ensure_offline()
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_output(args.verbose)
    defaults.set_progress_bars(not getattr(args, "no_progress", False))  # also the bars a command does not own
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    if sys.stdin.isatty():  # Ctrl-C works at a terminal even when launched from a shell that ignores SIGINT (nohup, &)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past ulimit -f a write fails with EFBIG (reported) instead
    try:
        _warn_read_only_home()
        args.cfg = Config.load(args.config)
        if args.quantize is not None:
            args.cfg.experts.quantize = args.quantize
        return int(args.func(args) or 0)
    except AsymmetryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        err = write_error(exc.filename, exc)
        if err is not None:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return _unexpected(args, exc)
    except Exception as exc:  # noqa: BLE001 -- the last line of defence: one line and a logged traceback
        return _unexpected(args, exc)


# Third-party output turned off unless --verbose, read by the libraries when they are first imported (the CLI imports
# them only when a command runs): transformers' log lines below an error, and its and huggingface_hub's progress bars.
QUIET_ENV = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def setup_output(verbose: bool) -> None:
    """Our log lines at WARNING (INFO with ``verbose``) on stderr; third-party log lines, progress bars and Python
    warnings only with ``verbose`` (their errors always); our own Python warnings as one ``warning: ...`` line."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:  # filter at the handler: some libraries (bm25s) set their
        handler.setLevel(level)  # own loggers to DEBUG on import, which the root logger's level does not stop
        if verbose:
            handler.removeFilter(_own_or_error)
        else:
            handler.addFilter(_own_or_error)
    warnings.showwarning = _show_warning_verbose if verbose else _show_warning
    if verbose:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "transformers" in sys.modules:  # already imported (the CLI called in-process): tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


OWN_LOGGERS = ("asymmetry", "__main__")


def _own_or_error(record: logging.LogRecord) -> bool:
    """A log record of ours, or anyone's error."""
    return record.levelno >= logging.ERROR or record.name.split(".", 1)[0] in OWN_LOGGERS


def _our_folders() -> tuple[str, ...]:
    """The folders of our loaded modules (``asymmetry`` and its subpackages, which live in folders of their own in a
    source checkout), each ending in a path separator."""
    folders = {os.path.dirname(os.path.abspath(module.__file__)) + os.sep for name, module in list(sys.modules.items())
               if name.split(".", 1)[0] == "asymmetry" and getattr(module, "__file__", None)}
    return tuple(folders)


def _show_warning(message, category, filename, lineno, file=None, line=None, verbose: bool = False) -> None:
    """A Python warning of ours is one line, ``warning: MESSAGE``; a third-party one is dropped, or shown as Python
    shows it with ``verbose``."""
    out = sys.stderr if file is None else file
    if os.path.abspath(filename).startswith(_our_folders()):
        print(f"warning: {message}", file=out)
    elif verbose:
        out.write(warnings.formatwarning(message, category, filename, lineno, line))


def _show_warning_verbose(message, category, filename, lineno, file=None, line=None) -> None:
    _show_warning(message, category, filename, lineno, file, line, verbose=True)


def command_name(args: argparse.Namespace) -> str:
    """``asymmetry index build``: the command and its action, as typed."""
    words = [args.command] if getattr(args, "command", None) else []
    action = getattr(args, f"{args.command}_command", None) if words else None
    return " ".join(["asymmetry", *words, *([action] if isinstance(action, str) else [])])


def _warn_read_only_home() -> None:
    if not defaults.home_is_writable():
        print(f"warning: ASYMMETRY_HOME {defaults.home()} is read-only: using what is already built there; a command "
              "that must build or convert something will say so (point ASYMMETRY_HOME at a writable folder)",
              file=sys.stderr)


def _log_folder() -> Path:
    try:
        folder = defaults.home() / "logs"
        folder.mkdir(exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except (OSError, AsymmetryError):
        pass
    return Path(tempfile.gettempdir())


def _unexpected(args: argparse.Namespace, exc: BaseException) -> int:
    """Log the full traceback to ``$ASYMMETRY_HOME/logs/`` and print one line naming the command, the error and
    the log; exit code 1."""
    name = command_name(args)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = _log_folder() / f"asymmetry-{stamp}-{os.getpid()}.log"
    try:
        path.write_text(f"{name}\nargv: {sys.argv}\n\n" + "".join(traceback.format_exception(exc)), encoding="utf-8")
        where = f"full traceback in {path}"
    except OSError:
        where = "the traceback could not be logged"
    message = str(exc).splitlines()[0][:300] if str(exc) else ""
    print(f"error: {name} failed unexpectedly: {type(exc).__name__}: {message} ({where}); please report it",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
