"""The assistant: the Python API over the engine (ask, stream, chat).

    >>> from asymmetry import Assistant
    >>> bot = Assistant.load()
    >>> bot.ask("Who developed the theory of general relativity?")

Every call builds one :class:`~asymmetry.engine.Request`, lets the engine plan it (embed once, route, retrieve,
prompt) and decode it. ``stream`` returns an :class:`~asymmetry.engine.AnswerStream`: iterate it for text, then
read its ``answer``. Several threads may ask one assistant at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asymmetry.config import Config
from asymmetry.engine import AUTO, Answer, AnswerStream, Engine, Plan, Request, Source
from asymmetry.experts import ModelPool
from asymmetry.sampling.prefix import PromptCache

__all__ = ["Answer", "AnswerStream", "Assistant", "Chat", "Source"]


class Assistant:
    """Routes, retrieves and samples. Build it with :meth:`load`; everything heavy loads on first use."""

    def __init__(self, config: Config | None = None, *, engine: Engine | None = None, pool: ModelPool | None = None):
        self.engine = engine if engine is not None else Engine(config, pool=pool)
        self.config = self.engine.config

    @classmethod
    def load(cls, config: Config | str | None = None, *, pool: ModelPool | None = None) -> Assistant:
        """The embedded defaults with ``config=None``; a :class:`Config` or a TOML path otherwise. ``pool``: a
        :class:`ModelPool` to share loaded models with other assistants or evaluations in this process."""
        if config is not None and not isinstance(config, Config):
            config = Config.load(config)
        return cls(config, pool=pool)

    def __repr__(self) -> str:
        return f"Assistant({self.engine!r})"

    @property
    def experts(self):
        return self.engine.experts

    @property
    def router(self):
        return self.engine.router

    @property
    def retriever(self):
        return self.engine.retriever

    @staticmethod
    def request(question: str, *, expert: str | None = AUTO, retrieval: bool | None = None, sampler: Any = None,
                history: Sequence[dict[str, str]] | None = None, mixture: bool | None = None) -> Request:
        """The :class:`Request` for one question (keyword arguments as in :meth:`ask`)."""
        return Request(question=question, expert=expert, retrieval=retrieval, sampler=sampler,
                       history=tuple(history or ()), mixture=mixture)

    def prepare(self, question: str, **kwargs) -> Plan:
        """Everything before sampling, as a :class:`~asymmetry.engine.Plan`."""
        return self.engine.plan(self.request(question, **kwargs))

    def stream(self, question: str, **kwargs) -> AnswerStream:
        """An :class:`AnswerStream`: iterate it for the answer's text as it is generated; its ``answer`` holds the
        full :class:`Answer` afterwards."""
        return self.engine.stream(self.prepare(question, **kwargs))

    def ask(self, question: str, **kwargs) -> Answer:
        """Answer one question. Keyword arguments: ``expert`` (name or "auto"), ``retrieval`` (bool),
        ``sampler`` (dict of sampler fields or a SamplerConfig), ``history``, ``mixture``."""
        stream = self.stream(question, **kwargs)
        stream.text()
        return stream.answer

    def chat(self, **defaults) -> Chat:
        """A conversation that keeps its history (trimmed to the context budget)."""
        return Chat(self, **defaults)


class Chat:
    """``chat.say("...")`` answers with the conversation so far; per-call overrides as in :meth:`Assistant.ask`.

    The chat keeps the KV cache of its last turn (that prompt and the reply), one per chat: the next turn prefills
    only what follows the longest prefix its prompt shares with it (``answer.stats["reused_tokens"]``). The prefix
    is checked token by token and the cache belongs to one model and adapter, so an edited history or another
    expert reuses only what is really the same. ``kv_reuse=False`` turns it off."""

    def __init__(self, assistant: Assistant, kv_reuse: bool = True, **defaults):
        self.assistant = assistant
        self.defaults = defaults
        self.history: list[dict[str, str]] = []
        self.last_answer: Answer | None = None  # the conversation's last turn (what /sources shows)
        self.prompt_cache: PromptCache | None = PromptCache() if kv_reuse else None

    def __repr__(self) -> str:
        return f"Chat(turns={len(self.history) // 2}, defaults={self.defaults})"

    def stream(self, text: str, **overrides) -> AnswerStream:
        """Stream one turn; the turn joins the history when the stream ends (interrupted turns too)."""
        kwargs = {**self.defaults, **overrides, "history": list(self.history)}
        plan = self.assistant.prepare(text, **kwargs)
        return self.assistant.engine.stream(plan, on_finish=self._remember, prompt_cache=self.prompt_cache)

    def say(self, text: str, **overrides) -> Answer:
        stream = self.stream(text, **overrides)
        stream.text()
        return stream.answer

    def _remember(self, answer: Answer) -> None:
        self.last_answer = answer
        self.history += [{"role": "user", "content": answer.question}, {"role": "assistant", "content": answer.text}]

    def reset(self) -> None:
        self.history.clear()
        self.last_answer = None
        if self.prompt_cache is not None:
            self.prompt_cache.clear()
