"""asymmetry: a local retrieval-augmented mixture-of-experts assistant with a stackable sampler.

    >>> from asymmetry import Assistant
    >>> bot = Assistant.load()
    >>> bot.ask("Who developed the theory of general relativity?")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Answer", "Assistant", "Chat", "Config", "__version__"]


def __getattr__(name):  # lazy: `import asymmetry` stays light for the CLI
    if name in ("Assistant", "Answer", "Chat", "Source"):
        from asymmetry import assistant

        return getattr(assistant, name)
    if name == "Config":
        from asymmetry.config import Config

        return Config
    raise AttributeError(f"module 'asymmetry' has no attribute {name!r}")
