"""A quiet terminal (issue 15, part 5): the commands show our own log lines, warnings and progress bars, and nothing of
third-party libraries unless --verbose."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import pytest

from asymmetry import cli

# what a stray third-party progress bar or warning leaves on stderr
STRAY = ("it/s]", "s/it]", "Loading weights", "Split strings", "Stem Tokens", "Writing model shards", "[transformers]",
         "FutureWarning", "UserWarning", "DeprecationWarning")


def test_ask_shows_only_the_answer():
    """`asymmetry ask` on the built home (the default line-up, one named expert): the answer on stdout, stderr holds
    no third-party bar or warning."""
    out = subprocess.run([sys.executable, "-m", "asymmetry", "ask", "Who painted the Mona Lisa?", "--expert", "general",
                          "--max-tokens", "12"], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    stray = [s for s in STRAY if s in out.stderr]
    assert not stray, f"stray output {stray} on stderr:\n{out.stderr}"


@pytest.mark.parametrize("argv, verbose", [
    (["ask", "q"], False), (["-v", "ask", "q"], True), (["ask", "q", "--verbose"], True),
    (["eval", "mc", "x.csv", "-v"], True), (["search", "q"], False),
])
def test_verbose_before_or_after_the_command(argv, verbose):
    assert cli.build_parser().parse_args(argv).verbose is verbose


def test_third_party_log_lines_hidden_ours_and_errors_kept():
    def record(name, level):
        return logging.LogRecord(name, level, __file__, 1, "message", None, None)

    assert cli._own_or_error(record("asymmetry.experts.base", logging.WARNING))
    assert cli._own_or_error(record("transformers.modeling_utils", logging.ERROR))
    assert not cli._own_or_error(record("transformers.quantizers.quantizer_gguf", logging.WARNING))
    assert not cli._own_or_error(record("bm25s", logging.INFO))


def test_python_warnings_ours_one_line_third_party_only_verbose():
    ours = cli.__file__  # a file of our package
    theirs = logging.__file__
    buf = io.StringIO()
    cli._show_warning("the prompt was cut", UserWarning, ours, 10, file=buf)
    assert buf.getvalue() == "warning: the prompt was cut\n"
    buf = io.StringIO()
    cli._show_warning("old API", FutureWarning, theirs, 10, file=buf)
    assert buf.getvalue() == ""
    cli._show_warning_verbose("old API", FutureWarning, theirs, 10, file=buf)
    assert "FutureWarning: old API" in buf.getvalue()


def test_no_progress_turns_off_every_bar(tmp_path, monkeypatch):
    """--no-progress silences the bars a command does not own too (a GGUF model's loading bar in an eval log)."""
    from asymmetry import defaults

    monkeypatch.chdir(tmp_path)
    try:
        assert cli.main(["eval", "qa", "missing.jsonl"]) == 2  # a bad input: an error; bars as they were
        assert defaults.progress_bars()
        assert cli.main(["eval", "qa", "missing.jsonl", "--no-progress"]) == 2
        assert not defaults.progress_bars()
    finally:
        defaults.set_progress_bars(True)
