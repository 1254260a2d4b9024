"""Retrieval tests: the shared small corpus and index fixtures live in tests/conftest.py."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """langchain-tests' ``test_ainvoke_returns_documents`` is a coroutine: run it in an event loop."""
    if Path(__file__).parent in Path(str(pyfuncitem.path)).parents and inspect.iscoroutinefunction(pyfuncitem.obj):
        kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        asyncio.run(pyfuncitem.obj(**kwargs))
        return True
    return None
