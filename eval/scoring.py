"""Multiple-choice option scoring by conditional log-likelihood, with the shared prefix run once.

For each question the prefix (retrieved context + question, ending e.g. in ``"Answer:"``) is run through the model
ONCE; its KV cache is then copied across the batch of options (``Cache.batch_select_indices``) and every option is
scored in a single forward pass from that cache. Several questions can share one prefix pass (left-padded) and one
option pass (right-padded), which is what :func:`score_batch` does.

Tokenisation follows lm-evaluation-harness: ``prefix_ids = encode(prefix)``, ``option_ids = encode(prefix +
option)[len(prefix_ids):]``, so the scores match its ``loglikelihood`` requests on the same strings.

Length normalisation (lm-eval's ``acc`` / ``acc_norm``):
  ``none``   sum of the option's token log-probabilities
  ``token``  that sum divided by the number of option tokens
  ``char``   that sum divided by the number of characters of the option text (without the delimiter space)

Classifier-free guidance for scoring: with a guidance scale ``s`` and an unconditional prefix (by default
``"Answer:"``, i.e. the prompt without context and question), each option token is scored under the guided
next-token distribution the sampler's CFG stage would draw from,
``log_softmax(u + s * (c - u))`` where ``c`` and ``u`` are the conditional and unconditional logits at that position.
``s = 1`` is plain scoring; ``s > 1`` pushes towards options that the question makes more likely than they are a
priori (it penalises options the model likes regardless of the question).

Several experts of one base share a batch: ``adapter_names`` gives each question's adapter (peft's per-row
``adapter_names``, ``__base__`` for the bare base), so ``expert compare`` scores an expert and its bare base in the
same forwards and ``eval mc`` scores a routed mix of experts together. This is the one option scorer of the project.

Dimension letters in shape comments: B questions in a batch, N option rows (all options of all questions),
P prefix length (padded), L option length (padded), V vocabulary size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from asymmetry.config import NORMALIZATIONS
from asymmetry.errors import AsymmetryError
from asymmetry.forward import forward_params, left_pad

Normalize = Literal["none", "token", "char"]
DEFAULT_UNCONDITIONAL = "Answer:"


@dataclass
class OptionScores:
    """Per-option results for one question: summed log-likelihoods, token counts and the normalised scores."""

    loglik: list[float]
    n_tokens: list[int]
    n_chars: list[int]
    scores: list[float]
    plain_loglik: list[float] | None = None  # with CFG: the unguided log-likelihoods from the same pass


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise AsymmetryError(f"invalid normalize={normalize!r}: use one of {', '.join(NORMALIZATIONS)}")


def encode_pair(tokenizer: Any, prefix: str, option: str) -> tuple[list[int], list[int]]:
    """Token ids of ``prefix`` and of ``option`` as it continues the prefix (lm-eval's context/continuation split)."""
    n_space = len(prefix) - len(prefix.rstrip(" "))
    if n_space:  # lm-eval moves trailing spaces of the context into the continuation
        prefix, option = prefix[:-n_space], prefix[-n_space:] + option
    prefix_ids = tokenizer(prefix, add_special_tokens=False).input_ids
    whole = tokenizer(prefix + option, add_special_tokens=False).input_ids
    option_ids = whole[len(prefix_ids) :]
    if not option_ids:
        raise AsymmetryError(f"option {option!r} encodes to no tokens: give every option some text")
    return prefix_ids, option_ids


def _normalise(loglik: list[float], n_tokens: list[int], n_chars: list[int], normalize: str) -> list[float]:
    if normalize == "token":
        return [ll / max(t, 1) for ll, t in zip(loglik, n_tokens)]
    if normalize == "char":
        return [ll / max(c, 1) for ll, c in zip(loglik, n_chars)]
    return list(loglik)


def _option_logits(model: Any, tokenizer: Any, prefixes: Sequence[str], options: Sequence[Sequence[str]],
                   adapter_names: Sequence[str] | None = None):
    """Run the prefixes once (left-padded) and all options from the copied cache; return per-row logits.

    Returns ``(logits, targets, lengths, owner)``: ``logits`` (N, L, V) are the next-token logits that predict each
    option token, ``targets`` (N, L) the option tokens, ``lengths`` (N,) the option lengths, ``owner`` (N,) the
    question index of each row.
    """
    import torch
    from transformers import DynamicCache

    device = model.device
    rows_kw = {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prefix_ids: list[list[int]] = []
    option_ids: list[list[int]] = []
    owner: list[int] = []
    for q, (prefix, opts) in enumerate(zip(prefixes, options)):
        ids = None
        for opt in opts:
            p_ids, o_ids = encode_pair(tokenizer, prefix, opt)
            ids = p_ids
            option_ids.append(o_ids)
            owner.append(q)
        if ids is None:
            raise AsymmetryError(f"question {q} has no options: give every question at least two options")
        if not ids:
            ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad_id]
        prefix_ids.append(ids)

    p_tokens, p_mask, p_pos = left_pad(prefix_ids, pad_id, device)  # B P each
    if adapter_names is not None:
        rows_kw = {"adapter_names": list(adapter_names)}  # B

    cache = DynamicCache(config=model.config)  # filled in place by the forward pass
    kw = forward_params(model)["cache"]
    out = model(
        input_ids=p_tokens, attention_mask=p_mask, position_ids=p_pos, use_cache=True, logits_to_keep=1,
        **{kw: cache}, **rows_kw,
    )
    last = out.logits[:, -1, :]  # B V  (predicts each option's first token)

    N, L = len(option_ids), max(len(o) for o in option_ids)
    idx = torch.tensor(owner, device=device)  # N
    cache.batch_select_indices(idx)  # every layer: B H P D -> N H P D
    o_tokens = torch.full((N, L), pad_id, dtype=torch.long)  # N L
    o_mask = torch.zeros((N, L), dtype=torch.long)  # N L
    for n, ids in enumerate(option_ids):
        o_tokens[n, : len(ids)] = torch.tensor(ids)
        o_mask[n, : len(ids)] = 1
    o_tokens, o_mask = o_tokens.to(device), o_mask.to(device)
    lengths = o_mask.sum(-1)  # N
    start = p_mask.sum(-1)[idx]  # N  (first position after each real prefix)
    o_pos = start[:, None] + torch.arange(L, device=device)[None, :]  # N L
    mask = torch.cat([p_mask[idx], o_mask], dim=-1)  # N (P+L)
    if L > 1:
        if adapter_names is not None:
            rows_kw = {"adapter_names": [adapter_names[q] for q in owner]}  # N
        o_out = model(
            input_ids=o_tokens[:, :-1], attention_mask=mask[:, :-1], position_ids=o_pos[:, :-1], use_cache=True,
            **{kw: cache}, **rows_kw,
        )
        logits = torch.cat([last[idx][:, None, :], o_out.logits], dim=1)  # N L V
    else:  # every option is one token: the prefix pass already predicts it
        logits = last[idx][:, None, :]  # N 1 V
    return logits, o_tokens, lengths, idx


def _token_logprobs(logits, targets, lengths):
    """Sum of log p(target) over the first ``lengths`` positions of each row -> (N,) tensor."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)  # N L V
    picked = logp.gather(-1, targets[:, :, None]).squeeze(-1)  # N L
    valid = torch.arange(targets.shape[1], device=targets.device)[None, :] < lengths[:, None]  # N L
    return (picked * valid).sum(-1)  # N


def score_batch(
    model: Any,
    tokenizer: Any,
    prefixes: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    normalize: Normalize = "none",
    cfg_scale: float = 1.0,
    unconditional_prefix: str | Sequence[str] = DEFAULT_UNCONDITIONAL,
    adapter_names: Sequence[str] | None = None,
    lock: Any = None,
) -> list[OptionScores]:
    """Score the options of several questions: one prefix pass and one option pass for the whole batch.

    ``prefixes[i]`` is question i's prompt (context + question); ``options[i]`` its option strings, each scored as a
    continuation of the prefix (include the leading space, e.g. ``" Paris"``). With ``cfg_scale != 1`` a second,
    unconditional pass over ``unconditional_prefix`` (one string or one per question) guides each token.
    ``adapter_names[i]``: question i's adapter on a peft model (``__base__`` for the bare base). ``lock``: held
    for the forwards (a pooled base's lock, when other requests share the model).
    """
    _check_normalize(normalize)
    if adapter_names is not None and len(adapter_names) != len(prefixes):
        raise AsymmetryError(f"got {len(adapter_names)} adapter names for {len(prefixes)} questions: pass one each")
    with lock if lock is not None else contextlib.nullcontext():
        return _score_batch(model, tokenizer, prefixes, options, normalize, cfg_scale, unconditional_prefix,
                            adapter_names)


def _score_batch(model, tokenizer, prefixes, options, normalize, cfg_scale, unconditional_prefix, adapter_names):
    import torch

    if len(prefixes) != len(options):
        raise AsymmetryError(f"got {len(prefixes)} prefixes but {len(options)} option lists: pass one per question")
    if not prefixes:
        return []
    with torch.inference_mode():
        logits, targets, lengths, owner = _option_logits(model, tokenizer, prefixes, options, adapter_names)
        plain = None
        if cfg_scale != 1.0:
            plain = _token_logprobs(logits, targets, lengths).tolist()
            uncond = [unconditional_prefix] * len(prefixes) if isinstance(unconditional_prefix, str) else list(
                unconditional_prefix
            )
            u_logits, _, u_lengths, _ = _option_logits(model, tokenizer, uncond, options, adapter_names)
            if not torch.equal(u_lengths, lengths):
                raise AsymmetryError(
                    "an option tokenises differently after the unconditional prefix; end both prefixes the same way "
                    "(e.g. with 'Answer:')"
                )
            L = min(logits.shape[1], u_logits.shape[1])
            logits = u_logits[:, :L] + cfg_scale * (logits[:, :L] - u_logits[:, :L])  # N L V
            targets = targets[:, :L]
        total = _token_logprobs(logits, targets, lengths).tolist()
    n_tok = lengths.tolist()
    owner_l = owner.tolist()
    results: list[OptionScores] = []
    row = 0
    for q, opts in enumerate(options):
        k = len(opts)
        assert owner_l[row : row + k] == [q] * k
        ll = total[row : row + k]
        nt = n_tok[row : row + k]
        nc = [len(o.strip()) for o in opts]
        results.append(OptionScores(ll, nt, nc, _normalise(ll, nt, nc, normalize),
                                    plain[row : row + k] if plain is not None else None))
        row += k
    return results


def score_options(
    model: Any,
    tokenizer: Any,
    prefix: str,
    options: Sequence[str],
    normalize: Normalize = "none",
    *,
    cfg_scale: float = 1.0,
    unconditional_prefix: str = DEFAULT_UNCONDITIONAL,
) -> list[float]:
    """Scores of ``options`` as continuations of ``prefix`` (higher is better), prefix run once, options batched."""
    return score_batch(
        model, tokenizer, [prefix], [options], normalize=normalize, cfg_scale=cfg_scale,
        unconditional_prefix=unconditional_prefix,
    )[0].scores


def score_options_naive(
    model: Any, tokenizer: Any, prefix: str, options: Sequence[str], normalize: Normalize = "none"
) -> list[float]:
    """Reference scorer: one full forward pass over prefix + option per option (no shared cache, no batching)."""
    import torch

    _check_normalize(normalize)
    loglik, n_tok = [], []
    with torch.inference_mode():
        for opt in options:
            p_ids, o_ids = encode_pair(tokenizer, prefix, opt)
            ids = torch.tensor([p_ids + o_ids], device=model.device)  # 1 T
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # T-1 V
            tgt = ids[0, 1:]  # T-1
            picked = logp.gather(-1, tgt[:, None]).squeeze(-1)[len(p_ids) - 1 :]  # O
            loglik.append(float(picked.sum()))
            n_tok.append(len(o_ids))
    return _normalise(loglik, n_tok, [len(o.strip()) for o in options], normalize)
