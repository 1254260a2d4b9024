"""Sampler stages: each is a callable ``(input_ids, scores) -> scores`` with one job.

Arguments are validated in ``__init__`` (an error names the field, the value and the fix). Stateful stages
(mirostat, grammar) also have ``accept(token)`` and ``reset()``. Stages that combine several branches of one
request (CFG, mixtures) subclass :class:`BranchCombiner`: the loop hands them the other branches' logits of the
same forward through ``set_branch_scores`` before the chain runs.

Shapes: B = rows of one request (1 for the chain), V = vocabulary, T = tokens so far, K = kept candidates,
R = branch rows consumed by a combiner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

from asymmetry.errors import AsymmetryError, ConfigError

NEG_INF = float("-inf")


@runtime_checkable
class Stage(Protocol):
    name: str

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class StatefulStage(Stage, Protocol):
    def accept(self, token: int) -> None: ...

    def reset(self) -> None: ...


class Penalties:
    """Repetition (llama.cpp ``repeat_penalty``), frequency and presence penalties over the last ``last_n`` tokens.

    Positive logits are divided by ``repeat``, negative ones multiplied; then ``frequency * count + presence`` is
    subtracted from every token seen. ``input_ids`` holds the prompt and the tokens generated so far.
    """

    name = "penalties"

    def __init__(self, repeat: float = 1.0, frequency: float = 0.0, presence: float = 0.0, last_n: int = 64):
        if not (isinstance(repeat, (int, float)) and repeat > 0):
            raise ConfigError("repeat_penalty", repeat, "use a positive factor; 1 turns it off")
        if not isinstance(last_n, int) or last_n < -1:
            raise ConfigError("penalty_last_n", last_n, "use -1 (whole context), 0 (off) or a positive count")
        for field_name, value in (("frequency_penalty", frequency), ("presence_penalty", presence)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(field_name, value, "use a finite number; 0 turns it off")
        self.repeat, self.frequency, self.presence, self.last_n = float(repeat), float(frequency), float(presence), last_n

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.last_n == 0 or input_ids.shape[-1] == 0:
            return scores
        window = input_ids if self.last_n == -1 else input_ids[:, -self.last_n :]  # (B, T')
        out = scores.clone()  # (B, V); only the tokens of the window change: O(T') work, not O(V) per stage
        for row in range(scores.shape[0]):
            seen, counts = torch.unique(window[row], return_counts=True)  # (U,), (U,)
            s = scores[row, seen]  # (U,)
            if self.repeat != 1.0:
                s = torch.where(s > 0, s / self.repeat, s * self.repeat)
            if self.frequency or self.presence:
                s = s - counts.to(s.dtype) * self.frequency - self.presence
            out[row, seen] = s
        return out


class Temperature:
    name = "temperature"

    def __init__(self, temperature: float):
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise ConfigError("temperature", temperature, "use a positive temperature (0 means greedy: set greedy)")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopK:
    name = "top_k"

    def __init__(self, k: int):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError("top_k", k, "use a positive number of tokens (0 in the config turns top-k off)")
        self.k = k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[:, -1:]  # (B, 1)
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one)."""

    name = "top_p"

    def __init__(self, p: float):
        if not (isinstance(p, (int, float)) and 0 < p <= 1):
            raise ConfigError("top_p", p, "use a probability in (0, 1]; 1 turns top-p off")
        self.p = float(p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Only the most likely tokens are sorted: the k largest probabilities, k growing 16-fold until they hold p
        # in every row (after top-k, or for a peaked distribution, the first k). Every token past them has at least
        # p before it, so it is dropped: the same set as a sort of the whole vocabulary (a 152k-token sort took
        # about 8 ms a step on one core, most of the sampler's time).
        probs = scores.softmax(-1)  # (B, V)
        width = probs.shape[-1]
        k = min(64, width)
        while True:
            top, order = torch.topk(probs, k, dim=-1)  # (B, k), sorted, descending
            cum = top.cumsum(-1)  # (B, k)
            if k == width or bool((cum[:, -1] >= self.p).all()):
                break
            k = min(k * 16, width)
        keep_sorted = (cum - top) < self.p  # mass before this token has not reached p yet
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, keep_sorted)  # (B, V)
        return scores.masked_fill(~keep, NEG_INF)


class MinP:
    """Keep tokens whose probability is at least ``p`` times that of the most likely token."""

    name = "min_p"

    def __init__(self, p: float):
        if not (isinstance(p, (int, float)) and 0 < p < 1):
            raise ConfigError("min_p", p, "use a fraction in (0, 1); 0 in the config turns min-p off")
        self.log_p = math.log(p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logprobs = scores.log_softmax(-1)  # (B, V)
        threshold = logprobs.max(-1, keepdim=True).values + self.log_p  # (B, 1)
        return scores.masked_fill(logprobs < threshold, NEG_INF)


class BranchCombiner:
    """A stage that reads the logits of other branches of the same request, computed in the same forward.

    ``branch_names`` lists the branches it consumes, in order; the loop calls :meth:`set_branch_scores` with their
    rows (R, V) before running the chain at every step.
    """

    name = "combine"
    branch_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.branch_scores: torch.Tensor | None = None

    def set_branch_scores(self, branch_scores: torch.Tensor) -> None:
        self.branch_scores = branch_scores  # (R, V)


class CFG(BranchCombiner):
    """Classifier-free guidance on log-probabilities: ``uncond + scale * (cond - uncond)``.

    ``uncond`` is the branch ``negative`` (the negative prompt followed by the same generated tokens). With
    ``rescale`` > 0 the guided log-probs are rescaled to the conditional's standard deviation and blended
    (``rescale * rescaled + (1 - rescale) * guided``), which tames large scales.
    """

    name = "cfg"
    branch_names = ("negative",)

    def __init__(self, scale: float, rescale: float = 0.0):
        super().__init__()
        if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
            raise ConfigError("cfg_scale", scale, "use a finite guidance scale; 1 means no guidance, 1.5 is typical")
        if not (isinstance(rescale, (int, float)) and 0 <= rescale <= 1):
            raise ConfigError("cfg_rescale", rescale, "use a blend factor in [0, 1]; 0 turns it off")
        self.scale, self.rescale = float(scale), float(rescale)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.branch_scores is None:
            raise AsymmetryError("the cfg stage got no negative branch: pass a negative prompt to generate()")
        cond = scores.log_softmax(-1)  # (B, V)
        uncond = self.branch_scores[:1].log_softmax(-1)  # (1, V)
        guided = uncond + self.scale * (cond - uncond)  # (B, V)
        if self.rescale > 0:
            finite = torch.isfinite(cond)
            std_cond = cond.where(finite, 0).std(-1, keepdim=True)  # (B, 1)
            std_guided = guided.where(finite, 0).std(-1, keepdim=True)  # (B, 1)
            guided = self.rescale * guided * (std_cond / std_guided) + (1 - self.rescale) * guided
        return guided


class Mixture(BranchCombiner):
    """Blend branches as a mixture of distributions: ``log sum_r w_r p_r`` (row 0 is the chain's own scores).

    The mixture-of-experts mode passes the same prompt under two adapters as two branches and the router
    probabilities as weights.
    """

    name = "mixture"

    def __init__(self, weights: Sequence[float], branch_names: Sequence[str]):
        super().__init__()
        if len(weights) != len(branch_names) + 1:
            raise ConfigError("mixture.weights", list(weights),
                              f"give one weight for the primary row plus one per branch ({len(branch_names) + 1})")
        if any((not isinstance(w, (int, float))) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError("mixture.weights", list(weights), "use non-negative weights with a positive sum")
        total = float(sum(weights))
        self.log_weights = torch.tensor([math.log(w / total) if w > 0 else NEG_INF for w in weights])  # (R+1,)
        self.branch_names = tuple(branch_names)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([scores[:1], self.branch_scores], 0).log_softmax(-1)  # (R+1, V)
        w = self.log_weights.to(rows.device, rows.dtype)[:, None]  # (R+1, 1)
        return torch.logsumexp(rows + w, dim=0, keepdim=True)  # (1, V)


class Mirostat:
    """Mirostat v1 and v2 as llama.cpp defines them, with a target that holds in both directions; surprise in bits.

    v2 keeps the tokens whose surprise ``-log2 p`` is at most ``mu``; v1 estimates the Zipf exponent ``s`` over the
    top ``m`` tokens and keeps the top ``k(s, mu)``. The stage truncates the scores; the loop samples from what is
    left and calls :meth:`accept`, which measures the observed surprise under the truncated, renormalised
    distribution and updates ``mu -= eta * (surprise - tau)``; ``mu`` starts at ``2 * tau``.

    Truncation can only lower surprise, so a distribution that is already more predictable than ``tau`` (e.g. after
    temperature 0.7) could never reach the target: plain mirostat then raises ``mu`` without bound. Here, on a step
    where the truncation removed (almost) nothing (less than ``slack`` of the mass) or ``mu`` sits at its bound
    ``mu_max``, a too-predictable token raises the stage's own temperature ``heat`` (scores are divided by it before
    truncating; at most ``max_heat``) instead of ``mu``; a too-surprising token lowers ``heat`` back towards 1 before
    it lowers ``mu``. ``mu`` stays in ``[0, mu_max]``. A step where the controller wanted to go past a bound counts
    in ``saturated_steps``; :meth:`out_of_reach` says the target was missed because of it.
    """

    name = "mirostat"

    def __init__(self, version: int, tau: float = 5.0, eta: float = 0.1, m: int = 100, vocab_size: int | None = None,
                 max_heat: float = 4.0, slack: float = 0.05):
        if version not in (1, 2):
            raise ConfigError("mirostat", version, "use 1 (mirostat v1) or 2 (mirostat v2)")
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ConfigError("tau", tau, "use a positive target surprise in bits, e.g. 5.0")
        if not (isinstance(eta, (int, float)) and eta > 0):
            raise ConfigError("eta", eta, "use a positive learning rate, e.g. 0.1")
        if not (isinstance(m, int) and m >= 2):
            raise ConfigError("mirostat_m", m, "use at least 2 tokens, e.g. 100")
        if not (isinstance(max_heat, (int, float)) and math.isfinite(max_heat) and max_heat >= 1):
            raise ConfigError("mirostat_max_heat", max_heat, "use a factor >= 1, e.g. 4; 1 turns the adaptive "
                              "temperature off")
        if not (isinstance(slack, (int, float)) and 0 <= slack < 1):
            raise ConfigError("mirostat slack", slack, "use a probability mass in [0, 1), e.g. 0.01")
        self.version, self.eta, self.m = version, float(eta), m
        self.vocab_size = vocab_size
        self.max_heat, self.slack = float(max_heat), float(slack)
        self.tau = float(tau)
        self.reset()

    @property
    def mu_max(self) -> float:
        """``mu``'s upper bound: above ``log2 V`` bits (less likely than uniform) truncation hardly matters."""
        return max(2.0 * self.tau, math.log2(self.vocab_size or 2**16)) + 1.0

    def reset(self) -> None:
        self.mu = 2.0 * self.tau
        self.log_heat = 0.0
        self.surprises: list[float] = []
        self.saturated_steps = 0
        self._logprobs: torch.Tensor | None = None
        self._loose = False

    def retarget(self, tau: float) -> None:
        """A new target from the next token on: ``mu`` restarts at ``2 * tau``; the learned heat is kept."""
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ConfigError("tau", tau, "use a positive target surprise in bits, e.g. 5.0")
        self.tau = float(tau)
        self.mu = 2.0 * self.tau

    @property
    def heat(self) -> float:
        return math.exp(self.log_heat)

    def _keep_count_v1(self, sorted_logprobs: torch.Tensor, n_vocab: int) -> int:
        m = min(self.m, sorted_logprobs.shape[-1])
        if m < 2:
            return 1
        i = torch.arange(m - 1, dtype=torch.float64)  # (m-1,)
        t = torch.log((i + 2) / (i + 1))  # (m-1,)
        lp = sorted_logprobs[:m].double()  # (m,)
        b = lp[:-1] - lp[1:]  # (m-1,)
        finite = torch.isfinite(b)
        if not bool(finite.any()):
            return 1
        s_hat = float((t[finite] * b[finite]).sum() / (t[finite] * t[finite]).sum())
        eps = s_hat - 1
        if s_hat <= 0 or abs(eps) < 1e-9:
            return n_vocab
        try:
            k = ((eps * 2.0**self.mu) / (1 - n_vocab ** (-eps))) ** (1 / s_hat)
        except (OverflowError, ZeroDivisionError):
            return n_vocab
        if not math.isfinite(k) or k <= 0:
            return n_vocab if k != 0 else 1
        return max(int(k), 1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.log_heat:
            scores = scores / self.heat  # (1, V)
        logprobs = scores[0].log_softmax(-1)  # (V,)
        if self.version == 2:
            keep = -logprobs / math.log(2) <= self.mu  # (V,)
            if not bool(keep.any()):
                keep = logprobs == logprobs.max()
        else:
            sorted_lp = torch.sort(logprobs, descending=True).values  # (V,)
            n_vocab = self.vocab_size or scores.shape[-1]
            k = self._keep_count_v1(sorted_lp, n_vocab)
            k = min(k, int(torch.isfinite(sorted_lp).sum()) or 1)
            keep = logprobs >= sorted_lp[k - 1]  # (V,)
        kept_mass = float(logprobs.masked_fill(~keep, NEG_INF).exp().sum())
        self._loose = kept_mass >= 1.0 - self.slack or self.mu >= self.mu_max
        out = scores.masked_fill(~keep[None], NEG_INF)  # (1, V)
        self._logprobs = out[0].log_softmax(-1)  # (V,)
        return out

    def accept(self, token: int) -> None:
        if self._logprobs is None:
            return
        surprise = float(-self._logprobs[token]) / math.log(2)
        if not math.isfinite(surprise):  # a later stage picked a token mirostat had dropped
            surprise = 2.0 * self.mu
        self.surprises.append(surprise)
        error = surprise - self.tau  # bits; < 0: too predictable
        saturated = False
        if error < 0 and self._loose:  # truncation is not what holds surprise down: warm up instead
            self.log_heat -= self.eta * error / 2
            if self.log_heat > math.log(self.max_heat):
                self.log_heat, saturated = math.log(self.max_heat), True
        elif error > 0 and self.log_heat > 0:  # too surprising while warmed up: cool down first
            self.log_heat = max(0.0, self.log_heat - self.eta * error / 2)
        else:
            self.mu -= self.eta * error
            if not 0.0 <= self.mu <= self.mu_max:
                self.mu, saturated = min(max(self.mu, 0.0), self.mu_max), True
        self.saturated_steps += saturated
        self._logprobs = None

    def out_of_reach(self, surprises: list[float] | None = None) -> bool:
        """The mean surprise missed ``tau`` by more than 1 bit while the controller sat at a bound."""
        surprises = self.surprises if surprises is None else surprises
        if not surprises or not self.saturated_steps:
            return False
        return abs(sum(surprises) / len(surprises) - self.tau) > 1.0


class Greedy:
    """Keep only the most likely token."""

    name = "greedy"

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        best = scores.argmax(-1, keepdim=True)  # (B, 1)
        return torch.full_like(scores, NEG_INF).scatter_(1, best, scores.gather(1, best))
