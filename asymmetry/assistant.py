"""The assistant pipeline: route, retrieve, pack context, build the expert's prompt, sample, answer.

Heavy parts (embedder, router, retriever, experts' models) load lazily, once, on first use. One question is
embedded once; the router and the retriever share that vector.

    >>> from asymmetry import Assistant
    >>> bot = Assistant.load()
    >>> bot.ask("Who developed the theory of general relativity?")
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from asymmetry.config import Config
from asymmetry.errors import AsymmetryError

log = logging.getLogger(__name__)

CITE_INSTRUCTION = (
    "Answer the question using the numbered Wikipedia passages below when they are relevant, and cite them "
    "like [1]. If they do not contain the answer, answer from your own knowledge and say so."
)


@dataclass
class Source:
    title: str
    text: str
    score: float
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Answer:
    """What :meth:`Assistant.ask` returns: the text, who answered, with what confidence, from which sources."""

    text: str
    expert: str
    confidence: float | None
    sources: list[Source] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    question: str = ""
    interrupted: bool = False

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        conf = "" if self.confidence is None else f", confidence {self.confidence:.2f}"
        lines = [self.text.strip(), "", f"-- expert: {self.expert}{conf}"]
        for i, src in enumerate(self.sources, 1):
            lines.append(f"[{i}] {src.title} (score {src.score:.3f})" + (f" {src.url}" if src.url else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "expert": self.expert,
            "confidence": self.confidence,
            "sources": [s.to_dict() for s in self.sources],
            "stats": self.stats,
            "timings": self.timings,
            "interrupted": self.interrupted,
        }


def _sampler_with(base, overrides):
    """A SamplerConfig with per-call overrides (a dict of fields, or a whole SamplerConfig); re-validated."""
    if overrides is None:
        return base
    if dataclasses.is_dataclass(overrides):
        return overrides
    if not isinstance(overrides, dict):
        raise AsymmetryError(f"sampler={overrides!r}: pass a dict of sampler fields or a SamplerConfig")
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise AsymmetryError(f"unknown sampler field {unknown[0]!r}: valid fields are {', '.join(sorted(names))}")
    return dataclasses.replace(base, **overrides)


class Assistant:
    """Routes, retrieves and samples. Build it with :meth:`load`; everything heavy loads on first use."""

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self._lock = threading.RLock()
        self._experts = None
        self._router = None
        self._retriever = None
        self._generators: dict[int, Any] = {}
        self.last_answer: Answer | None = None

    @classmethod
    def load(cls, config: Config | str | None = None) -> Assistant:
        """The embedded defaults with ``config=None``; a :class:`Config` or a TOML path otherwise."""
        if config is None or isinstance(config, Config):
            return cls(config)
        return cls(Config.load(config))

    def __repr__(self) -> str:
        loaded = [n for n, v in (("experts", self._experts), ("router", self._router), ("retriever", self._retriever))
                  if v is not None]
        return f"Assistant(experts={self.experts.names()}, loaded={loaded})"

    # -- lazily loaded parts -------------------------------------------------------------------------------------

    @property
    def experts(self):
        with self._lock:
            if self._experts is None:
                from asymmetry.experts import ExpertRegistry

                self._experts = ExpertRegistry.from_config(self.config.experts)
            return self._experts

    @property
    def router(self):
        """The trained router, checked against the configured experts and embedding model."""
        with self._lock:
            if self._router is None:
                from asymmetry.router import Router

                rc = self.config.router
                self._router = Router.load(rc.path, expert_names=self.experts.names(),
                                           embedding_model=self.config.index.embedding_model,
                                           threshold=rc.threshold, fallback=rc.fallback)
            return self._router

    @property
    def retriever(self):
        with self._lock:
            if self._retriever is None:
                from asymmetry.retrieval import Retriever

                self._retriever = Retriever.open(self.config.index.index_dir, config=self.config)
            return self._retriever

    def generator(self, model, tokenizer):
        from asymmetry.sampling import Generator

        key = id(model)
        if key not in self._generators:
            self._generators[key] = Generator(model, tokenizer)
        return self._generators[key]

    # -- the pipeline --------------------------------------------------------------------------------------------

    def _embed(self, text: str):
        from asymmetry.index.embedding import embed

        return embed([text], self.config.index.embedding_model)[0]

    def _choose_expert(self, question: str, expert: str | None, embedding) -> tuple[str, float | None, Any]:
        """(expert name, confidence, route or None)."""
        if expert not in (None, "auto"):
            self.experts.get(expert)  # raises a clear error for an unknown name
            return expert, None, None
        route = self.router.route(embedding)
        return route.expert, route.confidence, route

    def prepare(
        self,
        question: str,
        *,
        expert: str | None = "auto",
        retrieval: bool | None = None,
        sampler: dict | Any = None,
        history: list[dict[str, str]] | None = None,
        mixture: bool | None = None,
    ) -> dict[str, Any]:
        """Everything before sampling: returns the prompt ids, sampler config, expert, sources and timings."""
        if not isinstance(question, str) or not question.strip():
            raise AsymmetryError("the question is empty: ask something, e.g. 'Who developed general relativity?'")
        question = question.strip()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        embedding = self._embed(question)
        timings["embed"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        name, confidence, route = self._choose_expert(question, expert, embedding)
        spec = self.experts.get(name)
        timings["route"] = time.perf_counter() - t0

        use_retrieval = spec.retrieval if retrieval is None else bool(retrieval)
        passages = []
        if use_retrieval:
            t0 = time.perf_counter()
            passages = self.retriever.search(
                question, k=spec.k or self.config.retrieval.k, mode=self.config.retrieval.mode, query_embedding=embedding
            )
            timings["retrieve"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model, tokenizer = self.experts.model_for(name)
        timings["load_expert"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        base_sampler = _sampler_with(self.config.sampler, spec.sampler or None)
        sampler_cfg = _sampler_with(base_sampler, sampler)
        prompt_ids, sources, trimmed = self._build_prompt(spec, tokenizer, question, passages, history or [], sampler_cfg)
        timings["prompt"] = time.perf_counter() - t0
        if trimmed:
            warnings.warn(trimmed, stacklevel=3)

        use_mixture = self.config.assistant.mixture if mixture is None else mixture
        mix = None
        if use_mixture and route is not None and expert in (None, "auto"):
            mix = self._mixture_branches(route, spec, prompt_ids)
        return {
            "question": question,
            "expert": name,
            "confidence": confidence,
            "spec": spec,
            "model": model,
            "tokenizer": tokenizer,
            "prompt_ids": prompt_ids,
            "sampler": sampler_cfg,
            "sources": sources,
            "timings": timings,
            # CFG's negative: the sampler's own negative prompt, else the expert's negative rubric
            "negative_prompt": (sampler_cfg.negative_prompt or spec.negative_prompt)
            if sampler_cfg.cfg_scale != 1.0 else None,
            "mixture": mix,
        }

    def _mixture_branches(self, route, spec, prompt_ids):
        """When the router's top two are close and share a base, decode from both adapters' distributions blended
        by router probability: the same prompt runs as a second row of the same forward (peft's per-row
        ``adapter_names``)."""
        from asymmetry.sampling import Branch
        from asymmetry.sampling.stages import Mixture

        (first, p1), (second, p2) = route.top2
        if first != spec.name or p1 - p2 > self.config.assistant.mixture_margin:
            return None
        other = self.experts.get(second)
        if other.base != spec.base:
            log.info("mixture skipped: %s and %s are on different bases", first, second)
            return None
        total = p1 + p2
        names = self.experts.batch_kwargs([first, second]).get("adapter_names")
        if not names:  # no LoRA on this base: both experts are the same model
            return None
        return {
            "branches": [Branch(name=second, prompt=prompt_ids, row_kwargs={"adapter_names": names[1]})],
            "row_kwargs": {"adapter_names": names[0]},
            "combiner": Mixture([p1 / total, p2 / total], [second]),
            "info": {first: round(p1 / total, 4), second: round(p2 / total, 4)},
        }

    def _build_prompt(self, spec, tokenizer, question, passages, history, sampler_cfg):
        """Chat-template prompt within the context budget; trims passages, then history, then the question."""
        from asymmetry.retrieval import pack_passages

        budget = self.config.assistant.context_tokens - sampler_cfg.max_tokens
        if budget < 64:
            raise AsymmetryError(
                f"assistant.context_tokens={self.config.assistant.context_tokens} leaves no room for the prompt after "
                f"max_tokens={sampler_cfg.max_tokens}: raise context_tokens or lower max_tokens"
            )
        notice = None
        q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        max_q = budget // 2
        if len(q_ids) > max_q:
            question = tokenizer.decode(q_ids[:max_q])
            notice = f"the question is {len(q_ids)} tokens, longer than the context allows; kept its first {max_q}"

        def render(packed: str, hist: list[dict[str, str]]) -> list[int]:
            passages = f"{CITE_INSTRUCTION}\n\n{packed}" if packed else None
            text = spec.render(tokenizer, spec.messages(question, passages, hist))
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        base_len = len(render("", []))
        sources: list[Source] = []
        packed = ""
        if passages:
            room = min(self.config.retrieval.context_tokens, max(0, budget - base_len))
            packed, used = pack_passages(passages, tokenizer, room)
            sources = [Source(title=p.title, text=p.text, score=float(p.score), url=p.url) for p in used]
        hist = list(history)
        ids = render(packed, hist)
        while len(ids) > budget and hist:
            hist = hist[2:] if len(hist) >= 2 else []
            ids = render(packed, hist)
        if len(ids) > budget:
            ids = ids[-budget:]
            notice = notice or "the prompt was longer than the context budget and was cut from the left"
        return ids, sources, notice

    def ask(self, question: str, **kwargs) -> Answer:
        """Answer one question. Keyword arguments: ``expert`` (name or "auto"), ``retrieval`` (bool),
        ``sampler`` (dict of sampler fields or a SamplerConfig), ``history``, ``mixture``."""
        for _ in self._run(question, kwargs):
            pass
        return self.last_answer

    def stream(self, question: str, **kwargs) -> Iterator[str]:
        """Yield the answer's text as it is generated; ``self.last_answer`` holds the full :class:`Answer` after."""
        yield from self._run(question, kwargs)

    def _run(self, question: str, kwargs: dict[str, Any]) -> Iterator[str]:
        with self._lock:
            prep = self.prepare(question, **kwargs)
            gen = self.generator(prep["model"], prep["tokenizer"])
            t0 = time.perf_counter()
            parts: list[str] = []
            mix = prep["mixture"] or {}
            stream = gen.stream(
                prep["prompt_ids"],
                prep["sampler"],
                negative_prompt=prep["negative_prompt"],
                branches=mix.get("branches", ()),
                combiner=mix.get("combiner"),
                row_kwargs=mix.get("row_kwargs"),
            )
            try:
                for delta in stream:
                    parts.append(delta)
                    yield delta
            except BaseException:  # Ctrl-C, or the consumer stopped reading (GeneratorExit): keep what was said
                stream.close()
                self._finish(prep, parts, None, t0, interrupted=True)
                raise
            self._finish(prep, parts, gen.last, t0, interrupted=False)

    def _finish(self, prep, parts, generation, t0, interrupted):
        timings = dict(prep["timings"])
        timings["generate"] = time.perf_counter() - t0
        timings["total"] = sum(timings.values())
        stats = dict(generation.stats) if generation is not None else {}
        if prep["mixture"]:
            stats["mixture"] = prep["mixture"]["info"]
        self.last_answer = Answer(
            text=generation.text if generation is not None else "".join(parts),
            expert=prep["expert"],
            confidence=prep["confidence"],
            sources=prep["sources"],
            stats=stats,
            timings={k: round(v, 4) for k, v in timings.items()},
            question=prep["question"],
            interrupted=interrupted,
        )

    def chat(self, **defaults) -> Chat:
        """A conversation that keeps its history (trimmed to the context budget)."""
        return Chat(self, **defaults)


class Chat:
    """``chat.say("...")`` answers with the conversation so far; per-call overrides as in :meth:`Assistant.ask`."""

    def __init__(self, assistant: Assistant, **defaults):
        self.assistant = assistant
        self.defaults = defaults
        self.history: list[dict[str, str]] = []
        self.last_answer: Answer | None = None

    def __repr__(self) -> str:
        return f"Chat(turns={len(self.history) // 2}, defaults={self.defaults})"

    def _kwargs(self, overrides):
        kw = {**self.defaults, **overrides}
        kw["history"] = list(self.history)
        return kw

    def say(self, text: str, **overrides) -> Answer:
        answer = self.assistant.ask(text, **self._kwargs(overrides))
        self._remember(answer)
        return answer

    def stream(self, text: str, **overrides) -> Iterator[str]:
        try:
            yield from self.assistant.stream(text, **self._kwargs(overrides))
        finally:
            answer = self.assistant.last_answer
            if answer is not None and answer.question == text.strip():
                self._remember(answer)

    def _remember(self, answer: Answer):
        self.last_answer = answer
        self.history += [{"role": "user", "content": answer.question}, {"role": "assistant", "content": answer.text}]

    def reset(self):
        self.history.clear()
        self.last_answer = None
