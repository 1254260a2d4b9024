"""The decoding loop: KV cache, one batched forward per step over every branch of every request, the stage chain.

A *request* is one prompt; it has a primary row and optional *branch* rows (the CFG negative prompt, or the same
prompt under another LoRA adapter) that are decoded with the same generated tokens. All rows of all requests go
through ONE forward per step: left padding, an attention mask and explicit positions keep the rows independent
while they share one cache layout. After the forward, each request's primary scores run through its own stage
chain; combiner stages (CFG, mixture) read their branch rows from the same logits. With a single row and no
branches the loop passes no mask and no positions (the plain path does no extra work).

Shapes: N = rows in the batch, L = padded prompt length, V = vocabulary, T = tokens of one row so far.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from asymmetry.errors import AsymmetryError
from asymmetry.forward import forward_params, left_pad, output_cache
from asymmetry.sampling.chain import Chain, ChainContext, build_chain
from asymmetry.sampling.config import SamplerConfig
from asymmetry.sampling.controls import Control, ControlsConfig, ControlTokens
from asymmetry.sampling.grammar import GrammarMask, compile_grammar, read_constraint
from asymmetry.sampling.kernels import SmallBatchLinear, wants_small_batch
from asymmetry.sampling.logprobs import TextDelta, TokenLogprob, TokenTexts
from asymmetry.sampling.prefix import PromptCache
from asymmetry.sampling.stages import BranchCombiner

LOG2 = math.log(2)


@dataclass
class Branch:
    """An extra row of one request: its own prompt and per-row forward kwargs (e.g. ``{"adapter_names": "x"}``)."""

    name: str
    prompt: str | list[int]
    row_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stats: dict[str, Any]
    logprobs: list[TokenLogprob] | None = None  # per visible token, when the config asked (sampling/logprobs.py)


class GenerationStream:
    """Iterate for the text deltas of one generation; afterwards ``result`` holds its :class:`Generation`.

    ``close()`` (or leaving a ``for`` loop early and dropping the stream) stops decoding at the next step.
    """

    def __init__(self, run: Iterator[tuple[int, str]]):
        self._run = run
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            try:
                _, delta = next(self._run)
            except StopIteration as done:
                self.result = done.value[0]
                return
            yield delta

    def close(self) -> None:
        self._run.close()


@dataclass
class _Request:
    prompt_ids: list[int]
    chain: Chain
    row0: int  # index of the primary row
    n_rows: int
    combiners: dict[BranchCombiner, list[int]]  # combiner -> the batch rows it reads
    stop: list[str]
    buffer: torch.Tensor  # (1, T_max) prompt + generated ids, for stages reading input_ids
    seed: int = 0
    tokens: list[int] = field(default_factory=list)
    surprises: list[float] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    finish_reason: str | None = None
    # control tokens (sampling/controls.py): the current segment's config, what a rebuild of the chain needs,
    # the CFG negative row and its current text, rows to re-prefill at the next forward, the segments so far
    config: SamplerConfig | None = None
    ctx: ChainContext | None = None
    controls: ControlTokens | None = None
    emit_controls: bool = False  # the model may emit control tokens (else they are masked out)
    branch_rows: dict[str, int] = field(default_factory=dict)
    negative_row: int | None = None
    negative: str | list[int] | None = None
    prefill: dict[int, list[int]] = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)
    surprise_at: list[float | None] = field(default_factory=list)  # per generated token, None when greedy
    # log-probabilities (sampling/logprobs.py), only when the config asks: alternatives per token, this step's
    # distribution (V,), the entries so far and how many of them went out with a delta
    top_logprobs: int | None = None
    step_logprobs: torch.Tensor | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    logprobs_sent: int = 0

    def logprob_entries(self) -> list[TokenLogprob] | None:
        return list(self.logprobs) if self.top_logprobs is not None else None

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.tokens)


class Generator:
    """Our generation loop over any Hugging Face causal LM and its tokenizer."""

    def __init__(self, model, tokenizer, lock: threading.RLock | None = None, controls: ControlsConfig | None = None,
                 masked: Sequence[int] = ()):
        """``lock``: held for each forward (one decode step), never across a yield; pass the pooled base's lock
        when other requests share the model (peft's per-row adapters use hooks on the shared modules).
        ``controls``: the control vocabulary whose tokens steer the sampler; the tokenizer must hold its tokens
        (:func:`~asymmetry.sampling.controls.add_control_tokens`, before this generator is made). ``masked``: token
        ids never drawn (control tokens a base gained from another vocabulary this generator does not obey)."""
        self.model = model
        self.tokenizer = tokenizer
        self.lock = lock if lock is not None else contextlib.nullcontext()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = forward_params(model)
        self._cache_kw, self._keep_kw = params["cache"], params["keep"]
        config = getattr(base, "config", None)
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(tokenizer))
        self.eos_ids = self._eos_ids(base, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids or {0})
        self.controls = ControlTokens(controls, tokenizer) if controls is not None and controls.enabled else None
        if self.controls is not None and not self.controls:
            self.controls = None
        # control tokens that only extend the vocabulary (rows added after it) are left out of the final draw, so
        # a base that may not emit them draws exactly the tokens it drew before they were added
        ids = self.controls.ids if self.controls is not None else []
        self._draw_width = ids[0] if ids and ids == list(range(ids[0], self.vocab_size)) else None
        self._control_ids = torch.tensor(ids, dtype=torch.long)  # (C,): masked every step while not generated
        self._masked = torch.tensor(sorted(set(masked)), dtype=torch.long) if masked else None  # (M,): always
        self._token_texts: TokenTexts | None = None  # made when a request first asks for log-probabilities

    @property
    def token_texts(self) -> TokenTexts:
        """Token bytes and the ids hidden from users (special, control, EOS), for log-probabilities."""
        if self._token_texts is None:
            hidden = set(self.eos_ids) | {int(i) for i in self._control_ids}
            hidden |= {int(i) for i in self._masked} if self._masked is not None else set()
            self._token_texts = TokenTexts(self.tokenizer, self.vocab_size, hidden)
        return self._token_texts

    @staticmethod
    def _eos_ids(model, tokenizer) -> set[int]:
        ids: set[int] = set()
        gen_cfg = getattr(model, "generation_config", None)
        for value in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def device(self) -> torch.device:
        """Where the input ids go: the embedding's device (the first layer under a ``device_map``)."""
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        return weight.device if weight is not None else next(self.model.parameters()).device

    def _dtype(self) -> torch.dtype | None:
        embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(embeddings, "weight", None)
        return weight.dtype if weight is not None else None

    # ----------------------------------------------------------------------------------------------- prompts
    def encode(self, prompt: str | list[int], what: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        else:
            raise AsymmetryError(f"{what} must be a string or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise AsymmetryError(f"{what} is empty: pass some text or token ids")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise AsymmetryError(f"{what} holds token id {bad[0]} outside the vocabulary [0, {self.vocab_size}): "
                                 "use ids from this model's tokenizer")
        return ids

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        """Token ids of ``user`` (and ``system``) wrapped in the tokenizer's chat template, ready for a reply."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise AsymmetryError("this tokenizer has no chat template: drop --chat and pass a plain prompt")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(out, list):  # transformers 5 returns a BatchEncoding
            out = out["input_ids"]
        return list(out)

    # ----------------------------------------------------------------------------------------------- public API
    def generate(self, prompt: str | list[int], config: SamplerConfig | None = None, *,
                 negative_prompt: str | list[int] | None = None, stop: Sequence[str] | None = None,
                 forward_kwargs: dict[str, Any] | None = None, branches: Sequence[Branch] = (),
                 combiner: BranchCombiner | None = None, row_kwargs: dict[str, Any] | None = None,
                 prompt_cache: PromptCache | None = None, emit_controls: bool | None = None) -> Generation:
        """Generate a continuation of ``prompt``.

        ``negative_prompt`` (or ``config.negative_prompt``) turns on CFG: it runs as a second row of the same
        forward. ``forward_kwargs`` go unchanged to every model forward; ``row_kwargs`` (primary row) and each
        :class:`Branch`'s ``row_kwargs`` become per-row lists (peft's ``adapter_names``). ``combiner`` (e.g.
        :class:`~asymmetry.sampling.stages.Mixture`) runs first in the chain and reads the ``branches`` it names.
        ``prompt_cache`` (:class:`~asymmetry.sampling.prefix.PromptCache`): on the one-row path, start from the KV
        of the prefix this prompt shares with the cache's last sequence and leave this sequence's KV in it
        (``stats["reused_tokens"]``, ``stats["prefill_tokens"]``). ``emit_controls``: whether the model may emit
        control tokens (:meth:`emits_controls`; default: ``[controls] generate = true``).
        """
        return self.generate_batch([prompt], config, negative_prompt=negative_prompt, stop=stop,
                                   forward_kwargs=forward_kwargs, branches=branches, combiner=combiner,
                                   row_kwargs=row_kwargs, prompt_cache=prompt_cache, emit_controls=emit_controls)[0]

    def generate_batch(self, prompts: Sequence[str | list[int]], config: SamplerConfig | None = None, **kw
                       ) -> list[Generation]:
        """Generate for several prompts at once (one forward per step for all of them); same options as generate."""
        run = self._run(list(prompts), config or SamplerConfig(), **kw)
        while True:
            try:
                next(run)
            except StopIteration as done:
                return done.value

    def stream(self, prompt: str | list[int], config: SamplerConfig | None = None, **kw) -> GenerationStream:
        """A :class:`GenerationStream`: iterate it for text deltas as they are decided; its ``result`` is the
        final :class:`Generation`. Same options as :meth:`generate`."""
        return GenerationStream(self._run([prompt], config or SamplerConfig(), **kw))

    # ----------------------------------------------------------------------------------------------- the loop
    def _cfg_active(self, config: SamplerConfig, negative) -> bool:
        return "cfg" in config.stages and (negative is not None or config.cfg_scale != 1.0 or config.cfg_rescale > 0)

    def _grammar_stage(self, config: SamplerConfig):
        constraint = read_constraint(config)
        if constraint is None or "grammar" not in config.stages:
            return None
        compiled = compile_grammar(self.tokenizer, self.vocab_size, **constraint)
        return GrammarMask(compiled, self.vocab_size, sorted(self.eos_ids))

    def _check_branches(self, branches: Sequence[Branch], combiner: BranchCombiner | None) -> None:
        names = [b.name for b in branches]
        if len(set(names)) != len(names) or "negative" in names:
            raise AsymmetryError(f"branch names must be unique and not 'negative' (reserved for CFG), got {names}")
        if combiner is not None:
            missing = [n for n in combiner.branch_names if n not in names]
            if missing:
                raise AsymmetryError(f"the combiner reads branch {missing[0]!r}, which was not passed in branches=")

    def emits_controls(self, emit_controls: bool | None = None) -> bool:
        """Whether a request may emit control tokens: ``emit_controls`` when given (the engine: an expert trained
        with them), else ``[controls] generate = true``; never without a vocabulary."""
        if self.controls is None:
            return False
        return self.controls.config.generate is True if emit_controls is None else bool(emit_controls)

    def _layout(self, prompts: list, config: SamplerConfig, negative, branches: Sequence[Branch],
                combiner: BranchCombiner | None, row_kwargs: dict | None, seed: int, stops: list[str],
                emit_controls: bool | None = None):
        """The batch rows of every request (primary, its branches, the CFG negative) and each request's chain."""
        emit = self.emits_controls(emit_controls)
        rows: list[list[int]] = []
        rows_kw: list[dict[str, Any]] = []
        requests: list[_Request] = []
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt, "prompt" if len(prompts) == 1 else f"prompt {i}")
            seg_config, seg_negative, first = self._prompt_controls(ids, config, negative)
            cfg_active = self._cfg_active(seg_config, seg_negative)
            # a CFG negative row kept for a rubric a generated control may switch to (only a model that may emit
            # controls needs it: a prompt control alone sets the whole answer's parameters, rows as it needs)
            vocab = self.controls.config if self.controls is not None else None
            reserve = vocab is not None and vocab.uses_negative and emit
            row0 = len(rows)
            rows.append(ids)
            rows_kw.append(dict(row_kwargs or {}))
            branch_rows: dict[str, int] = {}
            for b in branches:
                branch_rows[b.name] = len(rows)
                rows.append(self.encode(b.prompt, f"branch {b.name!r} prompt"))
                rows_kw.append(dict(b.row_kwargs))
            ctx = ChainContext(vocab_size=self.vocab_size, cfg_active=cfg_active,
                               grammar_stage=self._grammar_stage(config))
            chain = build_chain(seg_config, ctx)
            if cfg_active or reserve:
                branch_rows["negative"] = len(rows)
                rows.append(self.encode(seg_negative, "negative prompt") if seg_negative is not None else ids[-1:])
                rows_kw.append(dict(row_kwargs or {}))
            if combiner is not None:
                chain.prepend(combiner if len(prompts) == 1 else copy.copy(combiner))
            chain.reset()
            combiners = {c: [branch_rows[n] for n in c.branch_names] for c in chain.combiners}
            buffer = torch.zeros(1, len(ids) + config.max_tokens, dtype=torch.long)  # (1, T_max)
            buffer[0, : len(ids)] = torch.tensor(ids)
            req = _Request(ids, chain, row0, len(rows) - row0, combiners, stops, buffer, seed, config=seg_config,
                           ctx=ctx, controls=self.controls, emit_controls=emit, branch_rows=branch_rows,
                           negative_row=branch_rows.get("negative"), negative=seg_negative,
                           top_logprobs=config.logprobs)
            req.segments.append({"control": first, "start": 0, "config": seg_config})
            requests.append(req)
        return rows, rows_kw, requests

    def _prompt_controls(self, ids: list[int], config: SamplerConfig, negative):
        """The config and CFG negative after the control tokens of the prompt, and the last control's name."""
        last = None
        if self.controls is not None:
            for token in ids:
                control = self.controls.by_id.get(token)
                if control is not None:
                    config, last = control.apply(config), control.name
                    if control.negative is not None:
                        negative = self.controls.config.rubric(control.negative)
        return config, negative, last

    @staticmethod
    def _per_row_kwargs(rows_kw: list[dict[str, Any]], forward_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Merge per-row kwargs (e.g. ``adapter_names``) into lists over the batch rows."""
        forward_kwargs = dict(forward_kwargs)
        for key in sorted({k for kw in rows_kw for k in kw}):
            if key in forward_kwargs:
                raise AsymmetryError(f"{key!r} is given both in forward_kwargs and as a per-row kwarg: pass it once")
            if any(key not in kw for kw in rows_kw):
                raise AsymmetryError(f"per-row kwarg {key!r} is missing on some rows: give it for the primary row "
                                     "(row_kwargs=) and for every branch")
            forward_kwargs[key] = [kw[key] for kw in rows_kw]
        return forward_kwargs

    def _run(self, prompts: list, config: SamplerConfig, *, negative_prompt=None, stop=None, forward_kwargs=None,
             branches: Sequence[Branch] = (), combiner: BranchCombiner | None = None, row_kwargs=None,
             prompt_cache: PromptCache | None = None, emit_controls: bool | None = None):
        if not isinstance(config, SamplerConfig):
            raise AsymmetryError(f"config must be a SamplerConfig, got {type(config).__name__}")
        if not prompts:
            raise AsymmetryError("no prompts given: pass at least one prompt")
        self._check_branches(branches, combiner)
        negative = negative_prompt if negative_prompt is not None else config.negative_prompt
        stops = list(config.stop) + list(stop or [])
        seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
        rng: dict[str, torch.Generator] = {}  # one generator per logits device, seeded on first use
        rows, rows_kw, requests = self._layout(prompts, config, negative, branches, combiner, row_kwargs, seed, stops,
                                               emit_controls)
        forward_kwargs = self._per_row_kwargs(rows_kw, forward_kwargs or {})

        n_rows = len(rows)
        device = self.device
        single = n_rows == 1
        t0 = time.perf_counter()
        reuse = prompt_cache if single else None  # one row only: a cache holds one row of one adapter
        key = self._cache_key(forward_kwargs) if reuse is not None else None
        reused = 0
        with torch.inference_mode():
            if single:  # the plain path: no mask, no positions
                past, reused = reuse.take(key, rows[0]) if reuse is not None else (None, 0)
                input_ids = torch.tensor([rows[0][reused:]], device=device)  # (1, T - reused)
                mask = pos = None
                logits, cache = self._forward(input_ids, None, None, past, forward_kwargs)
                fed = list(rows[0])  # the ids whose KV the cache holds
                if reuse is not None:
                    reuse.keep(key, fed, cache)
            else:
                input_ids, mask, pos = left_pad(rows, self.pad_id, device)  # (N, L) each
                logits, cache = self._forward(input_ids, mask, pos, None, forward_kwargs)
                pos = pos[:, -1:]  # (N, 1)
            forwards = 1
            t_prefill = time.perf_counter() - t0
            step_ids = torch.full((n_rows, 1), self.pad_id, dtype=torch.long)  # (N, 1)
            small = wants_small_batch(n_rows, device, self._dtype())  # see sampling/kernels.py

            while True:
                for index, req in enumerate(requests):
                    if req.finish_reason is not None:
                        continue
                    token, surprise = self._select(req, logits, config, rng)
                    req.chain.accept(token)
                    delta = self._advance(req, token, surprise, config)
                    step_ids[req.row0: req.row0 + req.n_rows, 0] = token
                    if delta or isinstance(delta, TextDelta):
                        yield index, delta
                if all(r.finish_reason is not None for r in requests):
                    break
                pending = {row: seq for req in requests for row, seq in req.prefill.items()}
                for req in requests:
                    req.prefill = {}
                if pending:  # a control switched a CFG negative: re-prefill those rows in this same forward
                    ids_in, mask, step_pos = self._prefill_step(step_ids, mask, pos, pending)
                    logits, cache = self._forward(ids_in.to(device), mask, step_pos, cache, forward_kwargs)
                    pos = step_pos[:, -1:]  # (N, 1)
                    forwards += 1
                    continue
                ids_in = step_ids.to(device)  # (N, 1)
                if not single:
                    mask = torch.cat([mask, mask.new_ones(n_rows, 1)], dim=1)  # (N, T)
                    pos = pos + 1  # (N, 1)
                if reuse is not None:
                    reuse.drop()  # the forward grows the cache it holds
                with SmallBatchLinear() if small else contextlib.nullcontext():
                    logits, cache = self._forward(ids_in, mask, pos, cache, forward_kwargs)
                forwards += 1
                if reuse is not None:
                    fed.append(int(step_ids[0, 0]))
                    reuse.keep(key, fed, cache)
        elapsed = time.perf_counter() - t0
        prefilled = sum(len(r) for r in rows) - reused
        return [Generation(req.text, list(req.tokens),
                           {**self._stats(req, seed, n_rows, forwards, t_prefill, elapsed),
                            "prefill_tokens": prefilled, "reused_tokens": reused},
                           req.logprob_entries()) for req in requests]

    def _cache_key(self, forward_kwargs: dict[str, Any]) -> tuple:
        """What a reusable KV cache was computed with: this model and the forward kwargs (the row's adapter)."""
        return id(self.model), repr(sorted(forward_kwargs.items()))

    def _prefill_step(self, step_ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor,
                      pending: dict[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs of one forward where the rows of ``pending`` restart from a new sequence (their old cache columns
        hidden) and every other row takes its next token, left padded to the longest new sequence (L).
        Returns ids (N, L), the attention mask over cache + step (N, T + L) and positions (N, L)."""
        n_rows, width = step_ids.shape[0], max(len(seq) for seq in pending.values())
        ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)  # (N, L)
        ids[:, -1] = step_ids[:, 0]
        step_mask = mask.new_zeros(n_rows, width)  # (N, L)
        step_mask[:, -1] = 1
        step_pos = (pos + 1).expand(n_rows, width).clone()  # (N, L)
        mask = mask.clone()
        for row, seq in pending.items():
            n = len(seq)
            ids[row] = self.pad_id
            ids[row, width - n:] = torch.tensor(seq)
            step_mask[row] = 0
            step_mask[row, width - n:] = 1
            mask[row] = 0  # the row's old sequence is no longer attended to
            step_pos[row] = 0
            step_pos[row, width - n:] = torch.arange(n, device=step_pos.device)
        return ids, torch.cat([mask, step_mask], dim=1), step_pos

    def _forward(self, input_ids, mask, pos, cache, forward_kwargs):
        kwargs = dict(forward_kwargs)
        kwargs["use_cache"] = True
        if cache is not None:
            kwargs[self._cache_kw] = cache
        if mask is not None:
            kwargs["attention_mask"] = mask
            kwargs["position_ids"] = pos
        if self._keep_kw:
            kwargs[self._keep_kw] = 1
        with self.lock:  # one step at a time on a shared model; released before the next yield
            out = self.model(input_ids=input_ids, **kwargs)
        return out.logits[:, -1, :].float(), output_cache(out, self._cache_kw)  # (N, V)

    def _select(self, req: _Request, logits: torch.Tensor, config: SamplerConfig, rng) -> tuple[int, float | None]:
        if logits.shape[-1] > self.vocab_size:  # the base gained control tokens after this generator was made:
            logits = logits[:, : self.vocab_size]  # its requests draw from the vocabulary they started with
        scores = logits[req.row0: req.row0 + 1]  # (1, V)
        config = req.config or config
        if req.controls is not None and not req.emit_controls:  # a model not trained with them never emits them
            scores = scores.index_fill(1, self._control_ids.to(scores.device), float("-inf"))
        if self._masked is not None:
            scores = scores.index_fill(1, self._masked.to(scores.device), float("-inf"))
        if req.chain:
            input_ids = req.buffer[:, : req.length]  # (1, T)
            if scores.device.type != "cpu":
                input_ids = input_ids.to(scores.device)
            req.chain.set_branch_scores({c: logits[idx] for c, idx in req.combiners.items()})  # (R, V) each
            if req.top_logprobs is not None:
                req.step_logprobs = self._reported_logprobs(req, input_ids, scores)
            scores = req.chain.apply(input_ids, scores)
        elif req.top_logprobs is not None:
            req.step_logprobs = scores[0].log_softmax(-1)  # (V,)
        if config.is_greedy:
            return int(scores.argmax(-1)), None
        if (self._draw_width is not None and not req.emit_controls
                and not bool(torch.isfinite(scores[:, self._draw_width:]).any())):
            scores = scores[:, : self._draw_width]  # (1, V - C): every control is masked out
        kept = torch.isfinite(scores[0]).nonzero().squeeze(1)  # (F,) the tokens the stages left
        if not kept.numel():
            raise AsymmetryError(f"every token was filtered out at step {len(req.tokens)} by the stages "
                                 f"{req.chain.names}: "
                                 "loosen the filters or move the grammar stage before top-k/top-p/min-p/mirostat")
        # The draw runs over the kept tokens only: the same distribution, and after top-k/top-p a few dozen numbers
        # instead of the whole vocabulary (multinomial over 152k entries took about 3 ms a step on one core).
        probs = torch.softmax(scores[0, kept], dim=-1)  # (F,)
        if str(probs.device) not in rng:
            rng[str(probs.device)] = torch.Generator(device=probs.device).manual_seed(int(req.seed))
        pick = int(torch.multinomial(probs, 1, generator=rng[str(probs.device)]))
        return int(kept[pick]), -math.log(max(float(probs[pick]), 1e-45)) / LOG2

    @staticmethod
    def _reported_logprobs(req: _Request, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The distribution log-probabilities describe (sampling/logprobs.py): the row after the combiner stages
        (CFG, mixture; their branch rows are set) and before every other stage. (1, V) scores -> (V,)."""
        for combiner in req.chain.combiners:
            scores = combiner(input_ids, scores)
        return scores[0].log_softmax(-1)

    def _record_logprob(self, req: _Request, token: int, before: str) -> None:
        """The entry of a visible generated token; ``before`` is the text decoded before it."""
        texts = self.token_texts
        entry = texts.entry(req.step_logprobs, token, req.top_logprobs)
        entry.offset, entry.end = _complete_prefix(before), _complete_prefix(req.text)
        req.logprobs.append(entry)

    @staticmethod
    def _with_logprobs(req: _Request, delta: str) -> str:
        """``delta`` carrying the entries of the tokens whose text is now out (at the end: every entry left, less the
        tokens a stop string cut away entirely)."""
        if req.finish_reason is not None:
            if req.finish_reason == "stop":
                req.logprobs = [e for e in req.logprobs if e.offset < len(req.text)]
            ready = len(req.logprobs)
        else:
            ready = req.logprobs_sent
            while ready < len(req.logprobs) and req.logprobs[ready].end <= req.emitted:
                ready += 1
        entries, req.logprobs_sent = req.logprobs[req.logprobs_sent: ready], max(ready, req.logprobs_sent)
        return TextDelta(delta, entries) if entries else delta

    def _advance(self, req: _Request, token: int, surprise: float | None, config: SamplerConfig) -> str:
        """Record ``token``; decide whether the request is finished; return the text that is now final."""
        before = req.text
        if token in self.eos_ids:
            req.finish_reason = "eos"
        else:
            surprise = req.chain.observed(surprise)
            req.buffer[0, req.length] = token
            req.tokens.append(token)
            req.surprise_at.append(surprise)
            if surprise is not None:
                req.surprises.append(surprise)
            control = req.controls.by_id.get(token) if req.controls is not None else None
            if control is not None:
                self._apply_control(req, control)
            visible = req.tokens if req.controls is None else [t for t in req.tokens if t not in req.controls]
            req.text = self.tokenizer.decode(visible, skip_special_tokens=True)
            if req.step_logprobs is not None and control is None and not self.token_texts.is_hidden(token):
                self._record_logprob(req, token, before)
            if req.stop:
                start = max(0, req.emitted - max(len(s) for s in req.stop))
                hits = [i for s in req.stop if (i := req.text.find(s, start)) >= 0]
                if hits:
                    req.text = req.text[: min(hits)]
                    req.finish_reason = "stop"
            if req.finish_reason is None and req.chain.finished:
                req.finish_reason = "grammar"
            if req.finish_reason is None and len(req.tokens) >= config.max_tokens:
                req.finish_reason = "length"
        final = len(req.text)
        if req.finish_reason is None:
            while final > req.emitted and req.text[final - 1] == "\ufffd":  # an incomplete UTF-8 sequence
                final -= 1
            for s in req.stop:  # hold back a possible beginning of a stop string
                for n in range(min(len(s) - 1, final - req.emitted), 0, -1):
                    if req.text[final - n: final] == s[:n]:
                        final -= n
                        break
        delta = req.text[req.emitted: final]
        req.emitted = max(req.emitted, final)
        if req.top_logprobs is not None:
            req.step_logprobs = None
            return self._with_logprobs(req, delta)
        return delta

    def _apply_control(self, req: _Request, control: Control) -> None:
        """A generated control token: a new segment from the next token on, with the control's parameters; a new
        CFG negative re-prefills the negative row (new negative prompt + every token generated so far)."""
        req.segments.append({"control": control.name, "start": len(req.tokens), "config": control.apply(req.config)})
        req.config = req.segments[-1]["config"]
        if control.negative is not None and req.negative_row is not None:
            negative = self.controls.config.rubric(control.negative)
            if negative != req.negative:
                req.negative = negative
                head = self.encode(negative, "negative rubric") if negative is not None else req.prompt_ids[-1:]
                req.prefill[req.negative_row] = head + req.tokens
        req.ctx.cfg_active = req.negative_row is not None and self._cfg_active(req.config, req.negative)
        req.chain.rebuild(req.config, req.ctx)
        req.combiners = {c: [req.branch_rows[n] for n in c.branch_names] for c in req.chain.combiners}

    @staticmethod
    def _segments(req: _Request) -> list[dict[str, Any]]:
        """``{control, start, end, tau, mean_surprise_bits}`` per segment (a control token ends the one before it)."""
        out = []
        for i, seg in enumerate(req.segments):
            start = seg["start"]
            end = req.segments[i + 1]["start"] - 1 if i + 1 < len(req.segments) else len(req.tokens)
            values = [v for v in req.surprise_at[start:end] if v is not None]
            cfg = seg["config"]
            out.append({"control": seg["control"], "start": start, "end": end,
                        "tau": cfg.tau if cfg.mirostat and not cfg.is_greedy else None,
                        "mean_surprise_bits": sum(values) / len(values) if values else None})
        return out

    def _stats(self, req: _Request, seed, n_rows, forwards, t_prefill, elapsed) -> dict[str, Any]:
        decode_s = max(elapsed - t_prefill, 1e-9)
        return {
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": len(req.tokens),
            "finish_reason": req.finish_reason,
            "seed": seed,
            "rows": n_rows,
            "forwards": forwards,
            **req.chain.stats(req.surprises),
            "segments": self._segments(req),
            "prefill_s": t_prefill,
            "elapsed_s": elapsed,
            "tokens_per_s": (forwards - 1) / decode_s if forwards > 1 else None,
        }


def _complete_prefix(text: str) -> int:
    """The length of ``text`` without a trailing incomplete UTF-8 sequence (decoded as U+FFFD)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    return end
