"""One exception type for every user-facing error: it names the problem and the fix."""

from __future__ import annotations


class AsymmetryError(Exception):
    """A user-facing error. The message says what is wrong and how to fix it; the CLI prints it without a traceback."""


class ConfigError(AsymmetryError, ValueError):
    """A configuration value is invalid. Raised at construction, naming the field, the value and the fix."""

    def __init__(self, field: str, value: object, fix: str):
        self.field, self.value, self.fix = field, value, fix
        super().__init__(f"invalid {field}={value!r}: {fix}")
