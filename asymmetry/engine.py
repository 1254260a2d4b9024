"""The engine: one typed request, one planner, one decode path, one output processor.

Every entry point (``Assistant.ask``/``stream``, ``Chat``, ``asymmetry ask``/``chat``, ``eval mc``) hands a
:class:`Request` to :meth:`Engine.plan` (or :meth:`Engine.plan_many` for a batch of questions), which builds a
:class:`Plan` in one place:

    embed the question once ──┬─► route (router or the named expert)
                              └─► retrieve (FAISS [+ BM25]) with the same vector
    expert = pooled base + adapter (chosen per row) ─► pack passages + prompt within the context budget
    control tokens in the question (``<|recall|>``, ``[controls]``) ─► added to the base's tokenizer once
    sampler config (config ← expert defaults ← request) ─► CFG negative, mixture branch rows

:meth:`Engine.stream` decodes a plan through the sampler and returns an :class:`AnswerStream` that yields text and
then holds its :class:`Answer`. With :meth:`Engine.start_batching` (the server) every decode joins the running batch
of its pooled base between steps (continuous batching, ``sampling/batch.py``) instead of running its own loop. Clients that score instead of decoding (``eval mc``) take the plan's expert, model,
context and sources.

The engine owns its parts (embedder, expert registry over a :class:`ModelPool`, router, retriever), loads each
lazily, once, and holds a lock only while constructing one; requests from several threads run concurrently (a
pooled base serialises its forwards step by step).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asymmetry import defaults
from asymmetry.config import Config
from asymmetry.embedder import Embedder
from asymmetry.errors import AsymmetryError
from asymmetry.experts import DEFAULT_BASE, Expert, ExpertModel, ExpertRegistry, ModelPool
from asymmetry.experts.controls import adapter_controls, load_control_rows
from asymmetry.experts.pool import BASE_ROW, PooledBase
from asymmetry.index import ensure_index
from asymmetry.retrieval import Passage, Retriever, pack_passages
from asymmetry.retrieval.attribution import attribute, citation_suffix, cites
from asymmetry.router import Route, Router
from asymmetry.sampling import Branch, Generator, SamplerConfig
from asymmetry.sampling.batch import BatchRunner
from asymmetry.sampling.controls import add_control_tokens
from asymmetry.sampling.generator import Generation, GenerationStream
from asymmetry.sampling.logprobs import TokenLogprob
from asymmetry.sampling.prefix import PromptCache
from asymmetry.sampling.stages import Mixture

log = logging.getLogger(__name__)

BARE = "base"  # the default expert's base model bare: no adapter, no system prompt (``eval mc --expert base``)
AUTO = "auto"  # let the router choose
BRIEF_INSTRUCTION = "Answer the question directly, in one short sentence."
NOT_IN_SOURCES = "(not in the sources)"
CITE_INSTRUCTION = (
    f"{BRIEF_INSTRUCTION} Use the numbered Wikipedia passages below when they contain the answer and cite the ones "
    "you used like [1]. If they do not contain the answer, still answer from your own knowledge, and end with "
    f"{NOT_IN_SOURCES}."
)
NO_SOURCES_INSTRUCTION = (
    f"{BRIEF_INSTRUCTION} No Wikipedia passage answers it: answer from your own knowledge, and end with "
    f"{NOT_IN_SOURCES}."
)


# -- what goes in and what comes out -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One question, as every entry point hands it to the engine.

    ``expert``: a name, ``"auto"`` (the router) or ``"base"`` (the bare default base). ``retrieval``: ``None`` takes
    the expert's default. ``sampler``: a dict of sampler fields or a whole :class:`SamplerConfig`, applied over the
    config and the expert's defaults. ``decode=False`` plans without a prompt or sampler (option scoring); then
    ``retrieval_query`` (search text other than the question), ``k`` and ``context_tokens`` (passage budget) may
    override the retrieval settings. ``raw=True`` decodes a continuation of ``question`` as it is: no prompt template,
    no retrieval, no history (the server's ``/v1/completions``).
    """

    question: str
    expert: str | None = AUTO
    retrieval: bool | None = None
    sampler: Any = None
    history: tuple[dict[str, str], ...] = ()
    mixture: bool | None = None
    decode: bool = True
    retrieval_query: str | None = None
    k: int | None = None
    context_tokens: int | None = None
    raw: bool = False


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
    """What a request returns: the text, who answered, with what confidence, from which sources."""

    text: str
    expert: str
    confidence: float | None
    sources: list[Source] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    question: str = ""
    interrupted: bool = False
    logprobs: list[TokenLogprob] | None = None  # per generated token, when the sampler config asked (logprobs=N)

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


@dataclass
class MixturePlan:
    """The router's top two experts decoded together: the second as a branch row of the same forward."""

    branches: list[Branch]
    combiner: Mixture
    weights: dict[str, float]


@dataclass
class Plan:
    """Everything decided about one request before decoding (or scoring)."""

    request: Request
    question: str
    expert: Expert
    model: ExpertModel
    confidence: float | None
    route: Route | None
    embedding: np.ndarray | None  # (D,)
    passages: list[Passage]  # the passages that fit the context budget, in order
    context: str  # those passages, numbered and packed
    sources: list[Source]
    timings: dict[str, float]
    sampler: SamplerConfig | None = None
    prompt_ids: list[int] = field(default_factory=list)
    negative_prompt: str | None = None
    mixture: MixturePlan | None = None
    notice: str | None = None  # what was cut to fit the context
    searched: bool = False  # retrieval ran (whether or not it kept any passage)
    controls: list[str] = field(default_factory=list)  # the control tokens the question and history hold, in order
    emit_controls: bool = False  # the expert may emit control tokens ([controls] generate; an expert trained with them)

    @property
    def row_kwargs(self) -> dict[str, Any]:
        return self.model.row_kwargs()


def sampler_with(base: SamplerConfig, overrides: Any) -> SamplerConfig:
    """``base`` with per-call overrides (a dict of fields, or a whole SamplerConfig), validated again."""
    if overrides is None:
        return base
    if isinstance(overrides, SamplerConfig):
        return overrides
    if not isinstance(overrides, dict):
        raise AsymmetryError(f"sampler={overrides!r}: pass a dict of sampler fields or a SamplerConfig")
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise AsymmetryError(f"unknown sampler field {unknown[0]!r}: valid fields are {', '.join(sorted(names))}")
    return base.steer(**overrides)  # --mirostat over a greedy expert samples (see SamplerConfig.steer)


class AnswerStream:
    """Iterate for the answer's text deltas; then ``answer`` holds the :class:`Answer` (also after Ctrl-C or an
    early ``break``: the partial text, marked ``interrupted``). ``on_finish`` is called once with the answer."""

    def __init__(self, plan: Plan, generation: GenerationStream,
                 on_finish: Callable[[Answer], None] | None = None, attribute: bool = True):
        self.plan = plan
        self._generation = generation
        self._on_finish = on_finish
        self._attribute = attribute
        self._cancelled = False
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        t0 = time.perf_counter()
        parts: list[str] = []
        cited: list[int] = []
        try:
            for delta in self._generation:
                parts.append(delta)
                yield delta
            cited = self._attribution("".join(parts))
            if cited:  # the reply cites nothing: cite the passages that hold what it says (retrieval/attribution)
                parts.append(citation_suffix(cited))
                yield parts[-1]
        except BaseException:  # Ctrl-C, or the consumer stopped reading (GeneratorExit): keep what was said
            self._generation.close()
            self._finish("".join(parts), None, t0, interrupted=True)
            raise
        self._finish("".join(parts), self._generation.result, t0, interrupted=False, attributed=cited)

    def _attribution(self, text: str) -> list[int]:
        sources = self.plan.sources
        if not (self._attribute and sources) or self._cancelled or cites(text) or NOT_IN_SOURCES in text:
            return []
        return attribute(text, self.plan.question, [f"{s.title}\n{s.text}" for s in sources])

    def cancel(self) -> None:
        """Stop decoding at the next step. With batching on (the server) this is safe from another thread while one
        iterates: the iteration then ends early, and the answer is marked interrupted."""
        self._cancelled = True
        self._generation.close()

    def text(self) -> str:
        """Run to the end; the whole text."""
        for _ in self:
            pass
        return self.answer.text

    def _finish(self, text: str, generation: Generation | None, t0: float, interrupted: bool,
                attributed: list[int] | None = None) -> None:
        plan = self.plan
        timings = dict(plan.timings)
        timings["generate"] = time.perf_counter() - t0
        timings["total"] = sum(timings.values())
        stats = dict(generation.stats) if generation is not None else {}
        if plan.mixture is not None:
            stats["mixture"] = dict(plan.mixture.weights)
        if attributed:
            stats["attributed"] = list(attributed)  # [n] the engine added (the model cited nothing)
        self.answer = Answer(
            text=generation.text + citation_suffix(attributed or []) if generation is not None else text,
            expert=plan.expert.name,
            confidence=plan.confidence,
            sources=list(plan.sources),
            stats=stats,
            timings={k: round(v, 4) for k, v in timings.items()},
            question=plan.question,
            interrupted=interrupted or self._cancelled,
            logprobs=generation.logprobs if generation is not None else None,
        )
        if self._on_finish is not None:
            self._on_finish(self.answer)


# -- the engine ------------------------------------------------------------------------------------------------------


class Engine:
    """Plans and decodes requests over one config and one model pool. Parts load lazily, once."""

    def __init__(self, config: Config | None = None, *, pool: ModelPool | None = None,
                 embedder: Embedder | None = None):
        defaults.ensure_offline()
        self.config = config or Config()
        self.pool = pool if pool is not None else ModelPool()
        self._embedder = embedder
        self._experts: ExpertRegistry | None = None
        self._router: Router | None = None
        self._retriever: Retriever | None = None
        self._build_lock = threading.Lock()  # held only while a part is constructed
        self._batching: dict[str, Any] | None = None  # BatchRunner settings once start_batching was called
        self._runners: dict[int, BatchRunner] = {}  # id(pooled base) -> its running batch
        self._controlled: set[int] = set()  # id(pooled base) of the bases that hold the control tokens
        self._control_rows: dict[int, str] = {}  # id(pooled base) -> the adapter whose trained control rows it holds
        self._trained: dict[str, dict | None] = {}  # adapter folder -> its card's controls (None: not trained)
        vocab = self.config.controls
        self._control_names = {c.token: c.name for c in vocab.controls}  # empty when [controls] enabled = false
        self._control_text = (re.compile("|".join(re.escape(t) for t in sorted(self._control_names, key=len,
                                                                                reverse=True)))
                              if self._control_names else None)
        default = next((e for e in self.config.experts.specs() if e.name == self.config.experts.default), None)
        self._bare = Expert(name=BARE, description="the default expert's base model, no adapter",
                            base=default.base if default else DEFAULT_BASE, adapter=None, system_prompt=None,
                            retrieval=True, k=self.config.retrieval.k)

    def __repr__(self) -> str:
        loaded = [n for n, v in (("experts", self._experts), ("router", self._router), ("retriever", self._retriever))
                  if v is not None]
        return f"Engine(experts={self.experts.names()}, loaded={loaded}, pool={self.pool!r})"

    # -- parts, loaded on first use ----------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        with self._build_lock:
            if self._embedder is None:
                self._embedder = Embedder(self.config.index.embedding_model)
            return self._embedder

    def _shared_query_embedding(self) -> bool:
        """The router's query vector (torch: what it was trained on) also searches the index only when the index was
        embedded with torch; with index.embed_backend onnx/onnx-int8 the retriever embeds the question with that
        backend itself (int8 vectors differ by ~0.5% cosine: the same expert on 96.9% of 900 held-out questions)."""
        return self.config.index.embed_backend == "torch"

    @property
    def experts(self) -> ExpertRegistry:
        with self._build_lock:
            if self._experts is None:
                self._experts = ExpertRegistry.from_config(self.config.experts, pool=self.pool)
            return self._experts

    @property
    def router(self) -> Router:
        """The trained router, checked against the configured experts and embedding model."""
        experts, embedder = self.experts, self.embedder
        with self._build_lock:
            if self._router is None:
                rc = self.config.router
                self._router = Router.load(rc.path, expert_names=experts.names(),
                                           embedding_model=self.config.index.embedding_model,
                                           threshold=rc.threshold, fallback=rc.fallback, embedder=embedder)
            return self._router

    @property
    def retriever(self) -> Retriever:
        """The retriever over the configured index; the default index is built on first use (progress bar)."""
        embedder = self.embedder if self._shared_query_embedding() else None  # None: the index's backend
        with self._build_lock:
            if self._retriever is None:
                index_dir = ensure_index(self.config, embedder=embedder)
                self._retriever = Retriever.open(index_dir, config=self.config, embedder=embedder)
            return self._retriever

    def expert(self, name: str) -> tuple[Expert, ExpertModel]:
        """A named expert, or ``"base"`` (the default expert's base, bare), with its model from the pool."""
        if name == BARE:
            return self._bare, self.pool.base(self._bare.base, self.experts.placement).bare()
        return self.experts.get(name), self.experts.model(name)

    # -- planning ----------------------------------------------------------------------------------------------------

    def plan(self, request: Request) -> Plan:
        return self.plan_many([request])[0]

    def plan_many(self, requests: Sequence[Request]) -> list[Plan]:
        """Plan several requests: their questions are embedded and routed in one batch."""
        questions = [self._checked_question(r) for r in requests]
        contents = [self.without_controls(q) for q in questions]  # what the embedder and the retriever read
        timings = [dict[str, float]() for _ in requests]
        embeddings = self._embed_step(requests, contents, timings)
        routes = self._route_step(requests, embeddings, timings)
        plans = []
        for i, request in enumerate(requests):
            (name, confidence, route) = routes[i]
            t0 = time.perf_counter()
            spec, model = self.expert(name)
            timings[i]["load_expert"] = time.perf_counter() - t0
            passages = self._retrieve_step(request, contents[i], spec, embeddings[i], timings[i])
            plan = Plan(request=request, question=questions[i], expert=spec, model=model, confidence=confidence,
                        route=route, embedding=embeddings[i], passages=passages, context="", sources=[],
                        timings=timings[i], searched="retrieve" in timings[i])
            if request.decode:
                self._decode_step(plan)
            else:
                self._pack_step(plan, request.context_tokens or self.config.retrieval.context_tokens)
            plans.append(plan)
        return plans

    @staticmethod
    def _checked_question(request: Request) -> str:
        if not isinstance(request.question, str) or not request.question.strip():
            raise AsymmetryError("the question is empty: ask something, e.g. 'Who developed general relativity?'")
        if request.expert not in (None, AUTO, BARE) and not isinstance(request.expert, str):
            raise AsymmetryError(f"expert={request.expert!r}: pass an expert name, 'auto' or 'base'")
        return request.question.strip()

    def _needs_embedding(self, request: Request) -> bool:
        """The router needs the question's vector; so does retrieval, unless it searches with other text."""
        if request.expert in (None, AUTO):
            return True
        spec = self._bare if request.expert == BARE else self.experts.get(request.expert)
        use_retrieval = spec.retrieval if request.retrieval is None else bool(request.retrieval)
        use_retrieval = use_retrieval and not request.raw
        return use_retrieval and request.retrieval_query is None

    def _embed_step(self, requests, questions, timings) -> list[np.ndarray | None]:
        """One batch through the embedder for every question the router or the retriever will need."""
        need = [i for i, r in enumerate(requests) if self._needs_embedding(r)]
        out: list[np.ndarray | None] = [None] * len(requests)
        if need:
            t0 = time.perf_counter()
            vectors = self.embedder.encode([questions[i] for i in need])  # (Q, D)
            for row, i in enumerate(need):
                out[i] = vectors[row]  # (D,)
            share = (time.perf_counter() - t0) / len(need)
            for i in need:
                timings[i]["embed"] = share
        return out

    def _route_step(self, requests, embeddings, timings) -> list[tuple[str, float | None, Route | None]]:
        auto = [i for i, r in enumerate(requests) if r.expert in (None, AUTO)]
        out: list[tuple[str, float | None, Route | None]] = []
        for r in requests:
            if r.expert not in (None, AUTO, BARE):
                self.experts.get(r.expert)  # raises a clear error for an unknown name
            out.append((r.expert, None, None))
        if auto:
            t0 = time.perf_counter()
            routes = self.router.route_batch(np.stack([embeddings[i] for i in auto]))  # (Q, D) in
            share = (time.perf_counter() - t0) / len(auto)
            for i, route in zip(auto, routes):
                out[i] = (route.expert, route.confidence, route)
                timings[i]["route"] = share
        return out

    def _retrieve_step(self, request: Request, question: str, spec: Expert, embedding, timings) -> list[Passage]:
        use = spec.retrieval if request.retrieval is None else bool(request.retrieval)
        if not use or request.raw:
            return []
        t0 = time.perf_counter()
        query = request.retrieval_query or question
        passages = self.retriever.search(
            query, k=request.k or spec.k or self.config.retrieval.k, mode=self.config.retrieval.mode,
            query_embedding=embedding if request.retrieval_query is None and self._shared_query_embedding() else None,
        )
        timings["retrieve"] = time.perf_counter() - t0
        return passages

    def _pack_step(self, plan: Plan, max_tokens: int) -> None:
        if plan.passages:
            plan.context, used = pack_passages(plan.passages, plan.model.tokenizer, max_tokens)
            plan.passages = list(used)
        plan.sources = [Source(title=p.title, text=p.text, score=float(p.score), url=p.url) for p in plan.passages]

    def _decode_step(self, plan: Plan) -> None:
        """Sampler config, prompt ids within the context budget, the CFG negative and the mixture rows."""
        t0 = time.perf_counter()
        request, spec = plan.request, plan.expert
        plan.sampler = sampler_with(sampler_with(self.config.sampler, spec.sampler or None), request.sampler)
        self._controls_step(plan)
        self._build_prompt(plan)
        plan.timings["prompt"] = time.perf_counter() - t0
        if plan.notice:
            warnings.warn(plan.notice, stacklevel=4)
        if plan.sampler.cfg_scale != 1.0:  # CFG's negative: the sampler's own negative prompt, else the expert's
            plan.negative_prompt = plan.sampler.negative_prompt or spec.negative_prompt
        use_mixture = self.config.assistant.mixture if request.mixture is None else request.mixture
        if use_mixture and plan.route is not None:
            plan.mixture = self._mixture(plan)

    def without_controls(self, text: str) -> str:
        """``text`` without control tokens (sampler hints, not content: the router and the retriever never see
        them)."""
        return text if self._control_text is None else self._control_text.sub("", text).strip()

    def _controls_step(self, plan: Plan) -> None:
        """Control tokens (``[controls]``, sampling/controls.py): a question or history that holds one (or a
        vocabulary that lets experts emit them, ``generate = true``) adds the control tokens to the base's tokenizer
        before the prompt is tokenized, once per base. From then on that base decodes through a generator that knows
        the vocabulary: prompt controls set the first segment, generated ones the next, none reaches the text."""
        if self._control_text is None:
            return
        texts = [plan.question] + [str(m.get("content", "")) for m in plan.request.history]
        plan.controls = [self._control_names[t] for text in texts for t in self._control_text.findall(text)]
        generate = self.config.controls.generate
        trained = self._trained_controls(plan.expert)
        plan.emit_controls = generate is True or (generate == "auto" and trained is not None)
        if plan.controls or plan.emit_controls:
            self._add_controls(plan.model.base)
            if trained is not None:
                self._load_control_rows(plan.model.base, plan.expert, trained)

    def _trained_controls(self, expert: Expert) -> dict | None:
        """The card's ``controls`` of an expert whose adapter was trained to emit control tokens (else None)."""
        if not expert.adapter:
            return None
        if expert.adapter not in self._trained:
            self._trained[expert.adapter] = adapter_controls(expert.adapter)
        return self._trained[expert.adapter]

    def _load_control_rows(self, base: PooledBase, expert: Expert, trained: dict) -> None:
        """Write the trained control rows of ``expert``'s adapter into its pooled base (once; one such adapter per
        base: the rows are the base's own)."""
        holder = self._control_rows.get(id(base))
        if holder == expert.adapter:
            return
        if holder is not None:
            raise AsymmetryError(
                f"experts {holder} and {expert.adapter} both carry trained control-token rows for base {base.name}: "
                "give one of them another base, or retrain them together")
        with self._build_lock, base.lock:
            load_control_rows(base.loaded.model, base.tokenizer, expert.adapter, trained)
            self._control_rows[id(base)] = expert.adapter

    def _add_controls(self, base: PooledBase) -> None:
        """Give ``base`` the control tokens (once; zero embedding rows where its matrix has no spare ones, so every
        ordinary token's logits stay what they were)."""
        if self._holds_controls(base):
            return
        with self._build_lock:
            with base.lock:  # between two forwards of whoever decodes on this base
                add_control_tokens(base.loaded.model, base.tokenizer, self.config.controls.tokens)
                added = {int(base.tokenizer.convert_tokens_to_ids(t)) for t in self.config.controls.tokens}
                base.control_ids = sorted(set(base.control_ids) | added)
            self._controlled.add(id(base))

    def _holds_controls(self, base: PooledBase) -> bool:
        """Whether ``base``'s tokenizer holds every control token (added by this engine or another on the pool)."""
        if id(base) in self._controlled:
            return True
        tokenizer = base.tokenizer
        if not self._control_names or any(tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)
                                          for t in self._control_names):
            return False
        self._controlled.add(id(base))
        return True

    def _generator(self, base: PooledBase) -> Generator:
        """A generator over ``base``: with the control vocabulary once the base holds the control tokens, else the
        plain one (a base no request has steered decodes exactly as before; with controls disabled here, tokens
        another engine added are masked out)."""
        controls = self.config.controls if self._holds_controls(base) else None
        # a base another engine on the pool gave control tokens: one with controls off never draws them
        masked = base.control_ids if controls is None else ()
        return Generator(base.model, base.tokenizer, lock=base.lock, controls=controls, masked=masked)

    def _build_prompt(self, plan: Plan) -> None:
        """Chat-template prompt within the context budget; trims passages, then history, then the question."""
        spec, tokenizer, sampler = plan.expert, plan.model.tokenizer, plan.sampler
        context_tokens = self.config.assistant.context_tokens
        budget = context_tokens - sampler.max_tokens
        if budget < 64:
            raise AsymmetryError(
                f"assistant.context_tokens={context_tokens} leaves no room for the prompt after "
                f"max_tokens={sampler.max_tokens}: raise context_tokens or lower max_tokens"
            )
        if plan.request.raw:  # the text as it is: keep its end when it is longer than the budget
            ids = tokenizer(plan.request.question, add_special_tokens=True)["input_ids"]
            if len(ids) > budget:
                plan.notice = f"the prompt is {len(ids)} tokens, longer than the context allows; kept its last {budget}"
            plan.prompt_ids = ids[-budget:]
            return
        question = plan.question
        q_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        max_q = budget // 2
        if len(q_ids) > max_q:
            question = tokenizer.decode(q_ids[:max_q])
            plan.notice = f"the question is {len(q_ids)} tokens, longer than the context allows; kept its first {max_q}"

        def render(packed: str, hist: list[dict[str, str]]) -> list[int]:
            instruction = CITE_INSTRUCTION if packed else (NO_SOURCES_INSTRUCTION if plan.searched else BRIEF_INSTRUCTION)
            text = spec.render(tokenizer, spec.messages(question, packed or None, hist, instruction=instruction))
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        room = min(self.config.retrieval.context_tokens, max(0, budget - len(render("", []))))
        self._pack_step(plan, room)
        hist = list(plan.request.history)
        ids = render(plan.context, hist)
        while len(ids) > budget and hist:
            hist = hist[2:] if len(hist) >= 2 else []
            ids = render(plan.context, hist)
        if len(ids) > budget:
            ids = ids[-budget:]
            plan.notice = plan.notice or "the prompt was longer than the context budget and was cut from the left"
        plan.prompt_ids = ids

    def _mixture(self, plan: Plan) -> MixturePlan | None:
        """When the router's top two are close and share a base, decode from both adapters' distributions blended
        by router probability: the same prompt runs as a second row of the same forward (per-row adapters)."""
        (first, p1), (second, p2) = plan.route.top2
        if first != plan.expert.name or p1 - p2 > self.config.assistant.mixture_margin:
            return None
        other = self.experts.get(second)
        if other.base != plan.expert.base:
            log.info("mixture skipped: %s and %s are on different bases", first, second)
            return None
        other_model = self.experts.model(second)
        if plan.model.row_name is None or other_model.row_name is None:  # no LoRA on this base: the same model
            return None
        total = p1 + p2
        return MixturePlan(
            branches=[Branch(name=second, prompt=plan.prompt_ids, row_kwargs=other_model.row_kwargs())],
            combiner=Mixture([p1 / total, p2 / total], [second]),
            weights={first: round(p1 / total, 4), second: round(p2 / total, 4)},
        )

    # -- decoding ----------------------------------------------------------------------------------------------------

    def stream(self, plan: Plan, on_finish: Callable[[Answer], None] | None = None,
               prompt_cache: PromptCache | None = None) -> AnswerStream:
        """Decode a planned request; iterate the returned stream for text, then read its ``answer``.
        ``prompt_cache``: a conversation's :class:`~asymmetry.sampling.prefix.PromptCache` (see :class:`Chat`);
        a one-row decode outside the running batch starts from the KV of the prefix it shares with the cache."""
        if not plan.request.decode:
            raise AsymmetryError("this plan was made with decode=False (for scoring): plan it again to generate")
        model = plan.model
        mixture = plan.mixture
        options = {"negative_prompt": plan.negative_prompt, "branches": mixture.branches if mixture else (),
                   "combiner": mixture.combiner if mixture else None, "row_kwargs": plan.row_kwargs,
                   "emit_controls": plan.emit_controls}
        if self._batching is not None:
            generation = self._runner(model.base).submit(plan.prompt_ids, plan.sampler, **options)
        else:
            generator = self._generator(model.base)
            generation = generator.stream(plan.prompt_ids, plan.sampler, prompt_cache=prompt_cache, **options)
        return AnswerStream(plan, generation, on_finish, attribute=self.config.assistant.attribute)

    # -- continuous batching -----------------------------------------------------------------------------------------

    def start_batching(self, max_rows: int = 16, max_waiting: int = 64,
                       on_step: Callable[[int, int], None] | None = None) -> None:
        """From now on :meth:`stream` decodes every plan in the running batch of its pooled base: requests join
        and leave between steps, rows of different experts of one base share each forward. ``max_rows`` rows run
        at once per base; ``max_waiting`` more requests may wait, beyond that ``stream`` raises
        :class:`~asymmetry.sampling.batch.QueueFull`. ``on_step(rows, requests)`` is called after each step."""
        self._batching = {"max_rows": max_rows, "max_waiting": max_waiting, "on_step": on_step}

    def stop_batching(self) -> None:
        """Stop every running batch; requests still in them end with an error."""
        with self._build_lock:
            runners, self._runners, self._batching = list(self._runners.values()), {}, None
        for runner in runners:
            runner.close()

    def batch_stats(self) -> dict[str, int]:
        """Waiting and running requests, rows, steps and forwards summed over the running batches."""
        total = {"waiting": 0, "running": 0, "rows": 0, "steps": 0, "forwards": 0}
        for runner in list(self._runners.values()):
            for key, value in runner.stats().items():
                total[key] += value
        return total

    def _runner(self, base: PooledBase) -> BatchRunner:
        with self._build_lock:
            runner = self._runners.get(id(base))
            if runner is None:
                if self._batching is None:
                    raise AsymmetryError("batching was stopped: the engine is shutting down")
                runner = BatchRunner(self._generator(base), model_source=lambda: base.model,
                                     row_defaults={"adapter_names": BASE_ROW}, name=base.name, **self._batching)
                self._runners[id(base)] = runner
            elif runner.gen.controls is None and self._holds_controls(base):  # the base gained the control tokens
                runner.use_generator(self._generator(base))
            return runner
