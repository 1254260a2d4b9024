"""`asymmetry chat` driven in a real pseudo-terminal: a question, slash commands, a second question, quit."""

from __future__ import annotations

import os
import sys

import pytest

pexpect = pytest.importorskip("pexpect")


def test_chat_session_in_a_pty(tmp_path):
    env = {"PYTHONUNBUFFERED": "1", "TERM": "dumb"}
    child = pexpect.spawn(
        sys.executable, ["-m", "asymmetry", "chat", "--max-tokens", "20", "--seed", "0"],
        env={**os.environ, **env}, encoding="utf-8", timeout=300,
    )
    try:
        child.expect("you> ")
        child.sendline("What is the largest planet in the solar system?")
        child.expect(r"bot> ")
        child.expect(r"\((\w+)[^;]*; (\d+) sources")
        first_expert = child.match.group(1)
        assert int(child.match.group(2)) > 0
        child.expect("you> ")
        child.sendline("/sources")
        child.expect(r"\[1\] ")
        child.expect("you> ")
        child.sendline("/expert general")
        child.expect("expert: general")
        child.expect("you> ")
        child.sendline("/set temperature=0.2")
        child.expect("set temperature=0.2")
        child.expect("you> ")
        child.sendline("/retrieval off")
        child.expect("retrieval: off")
        child.expect("you> ")
        child.sendline("And the smallest?")
        child.expect(r"\((general)[^;]*; 0 sources")
        child.expect("you> ")
        # Ctrl-C while an answer is being generated stops it; the chat stays usable
        child.sendline("/set max_tokens=400")
        child.expect("you> ")
        child.sendline("Write a long story about a dragon.")
        child.expect("bot> ")
        child.expect(r"\S")  # the first streamed text
        child.sendintr()
        if child.expect([r"\[interrupted\]", pexpect.TIMEOUT], timeout=60) != 0:
            pytest.fail(f"Ctrl-C did not stop the answer; the terminal showed: {child.before[-300:]!r}")
        child.expect("you> ")
        child.sendline("/set max_tokens=8")
        child.expect("you> ")
        child.sendline("Hello?")
        child.expect(r"\((general)")
        child.expect("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert first_expert
