"""SamplerConfig and stage validation, the CLI flag round trip, grammar errors: no generation needed."""

from __future__ import annotations

import argparse

import pytest
import torch

from asymmetry.config import Config
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.sampling import SamplerConfig
from asymmetry.sampling.chain import ChainContext, build_chain
from asymmetry.sampling.cli import add_sampler_arguments, sampler_config_from_args
from asymmetry.sampling.stages import CFG, MinP, Mirostat, Penalties, Temperature, TopK, TopP


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_tokens": 0}, "sampler.max_tokens"),
        ({"temperature": -1.0}, "sampler.temperature"),
        ({"top_p": 0.0}, "sampler.top_p"),
        ({"min_p": 1.0}, "sampler.min_p"),
        ({"mirostat": 3}, "sampler.mirostat"),
        ({"tau": 0}, "sampler.tau"),
        ({"repeat_penalty": 0}, "sampler.repeat_penalty"),
        ({"cfg_rescale": 2.0}, "sampler.cfg_rescale"),
        ({"stages": ["temperature", "nucleus"]}, "sampler.stages"),
        ({"stages": ["top_k", "top_k"]}, "sampler.stages"),
        ({"grammar": "root ::= \"a\"", "json_schema": "{}"}, "sampler.json_schema"),
    ],
)
def test_config_errors_name_field_value_and_fix(changes, field):
    with pytest.raises(ConfigError) as info:
        SamplerConfig(**changes)
    assert info.value.field == field
    assert ":" in str(info.value) and len(info.value.fix) > 10


def test_config_from_toml_dict_and_stage_order_is_data():
    cfg = Config.from_dict({"sampler": {"temperature": 0.5, "top_k": 10, "mirostat": 2,
                                        "stages": ["mirostat", "top_k", "temperature"]}})
    chain = build_chain(cfg.sampler, ChainContext(vocab_size=100))
    assert [s.name for s in chain] == ["mirostat", "top_k", "temperature"]
    default_chain = build_chain(SamplerConfig(temperature=1.0), ChainContext(vocab_size=100))
    assert default_chain.stages == []  # plain sampling at temperature 1 runs no stage at all
    with pytest.raises(ConfigError, match="sampler.stages"):
        Config.from_dict({"sampler": {"stages": ["bogus"]}})


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: Temperature(0), "temperature"),
        (lambda: TopK(0), "top_k"),
        (lambda: TopP(1.5), "top_p"),
        (lambda: MinP(0), "min_p"),
        (lambda: Mirostat(3), "mirostat"),
        (lambda: Mirostat(2, tau=-1), "tau"),
        (lambda: Mirostat(1, m=1), "mirostat_m"),
        (lambda: Penalties(repeat=0), "repeat_penalty"),
        (lambda: CFG(float("nan")), "cfg_scale"),
    ],
)
def test_stage_arguments_validated_at_construction(factory, field):
    with pytest.raises(ConfigError) as info:
        factory()
    assert info.value.field == field


def test_cli_flags_override_only_what_was_given():
    parser = argparse.ArgumentParser()
    add_sampler_arguments(parser)
    base = SamplerConfig(temperature=0.3, top_k=7, stop=["\n\n"])
    args = parser.parse_args(["--top-p", "0.9", "--mirostat", "2", "--tau", "4", "--stop", "END",
                              "--stages", "cfg,temperature,mirostat"])
    cfg = sampler_config_from_args(args, base)
    assert (cfg.temperature, cfg.top_k, cfg.top_p, cfg.mirostat, cfg.tau) == (0.3, 7, 0.9, 2, 4.0)
    assert cfg.stop == ["\n\n", "END"] and cfg.stages == ["cfg", "temperature", "mirostat"]
    with pytest.raises(ConfigError, match="top_p"):
        sampler_config_from_args(parser.parse_args(["--top-p", "2"]), base)


def test_grammar_syntax_error_reports_line_and_column(smollm):
    from asymmetry.sampling.grammar import compile_grammar

    grammar = 'root ::= item+\nitem ::= ("a" | "b" "c"'
    with pytest.raises(AsymmetryError, match=r"line 2, column \d+") as info:
        compile_grammar(smollm.tokenizer, smollm.model.config.vocab_size, grammar=grammar, source="g.gbnf")
    assert "g.gbnf" in str(info.value)
    with pytest.raises(AsymmetryError, match="not valid JSON: .* line 1, column"):
        compile_grammar(smollm.tokenizer, smollm.model.config.vocab_size, json_schema='{"type": }')


def test_filters_keep_what_they_should():
    scores = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.06, 0.04]]))
    ids = torch.zeros(1, 0, dtype=torch.long)
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()
    assert kept(TopK(2)(ids, scores)) == [0, 1]
    assert kept(TopP(0.75)(ids, scores)) == [0, 1]  # 0.5 + 0.25 reaches 0.75
    assert kept(TopP(0.76)(ids, scores)) == [0, 1, 2]
    assert kept(MinP(0.3)(ids, scores)) == [0, 1, 2]  # 0.15 >= 0.3 * 0.5
    out = Penalties(repeat=2.0, frequency=0.5, presence=1.0, last_n=3)(torch.tensor([[1, 0, 1, 1]]), scores.clone())
    expected = scores.clone()
    expected[0, 1] = scores[0, 1] * 2.0 - 0.5 * 2 - 1.0  # token 1 appears twice in the last 3
    expected[0, 0] = scores[0, 0] * 2.0 - 0.5 - 1.0
    torch.testing.assert_close(out, expected)


def _mass_before(scores: torch.Tensor) -> torch.Tensor:
    """The reference nucleus's quantity: per token, the probability of every token sorted before it (a full sort)."""
    sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
    probs = sorted_scores.softmax(-1)
    return torch.zeros_like(probs).scatter_(1, order, probs.cumsum(-1) - probs)


@pytest.mark.parametrize("spread", [0.5, 3.0, 12.0])  # flat (the search widens to the whole vocabulary) to peaked
@pytest.mark.parametrize("p", [0.1, 0.9, 0.95, 0.999])
def test_top_p_keeps_the_same_tokens_as_a_full_sort(spread, p):
    g = torch.Generator().manual_seed(int(spread * 100 + p * 1000))
    scores = torch.randn(3, 151936, generator=g) * spread  # three rows, Qwen's vocabulary width
    scores[1, torch.randperm(151936, generator=g)[:151900]] = float("-inf")  # a row after top-k: 36 tokens left
    out = TopP(p)(torch.zeros(3, 0, dtype=torch.long), scores)
    before = _mass_before(scores)
    reference = torch.isfinite(scores) & (before < p)
    kept = torch.isfinite(out)
    assert kept.any(-1).all()
    differ = kept != reference
    # float32 sums in another order may move a token whose mass before it is p to within rounding, nothing else
    assert all(abs(float(b) - p) < 1e-4 for b in before[differ]), before[differ]
    assert float(scores.softmax(-1)[differ].sum()) < 1e-4  # the kept distributions differ by < 1e-4 in mass
    assert torch.equal(out[kept], scores[kept])


def test_penalties_touch_only_the_window_tokens_as_the_dense_formula():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(2, 1000, generator=g) * 4
    ids = torch.randint(0, 50, (2, 90), generator=g)  # repeats within the window
    stage = Penalties(repeat=1.3, frequency=0.2, presence=0.4, last_n=64)
    counts = torch.zeros_like(scores).scatter_add_(1, ids[:, -64:], torch.ones(2, 64))
    seen = counts > 0
    dense = torch.where(seen, torch.where(scores > 0, scores / 1.3, scores * 1.3), scores) - counts * 0.2 - seen * 0.4
    torch.testing.assert_close(stage(ids, scores), dense)


def test_mirostat_v2_truncates_by_surprise_and_updates_mu():
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]])
    stage = Mirostat(2, tau=1.5, eta=0.5)
    assert stage.mu == 3.0
    out = stage(torch.zeros(1, 0, dtype=torch.long), probs.log())
    assert torch.isfinite(out[0]).tolist() == [True, True, True, False, False]  # surprise 1, 2, 3 bits <= mu
    stage.accept(1)  # p = 0.25 / 0.875 after renormalising
    surprise = -torch.log2(torch.tensor(0.25 / 0.875)).item()
    assert stage.surprises == [pytest.approx(surprise, abs=1e-5)]
    assert stage.mu == pytest.approx(3.0 - 0.5 * (surprise - 1.5), abs=1e-5)


def test_mirostat_v1_keeps_k_from_zipf_estimate():
    ranks = torch.arange(1, 1001, dtype=torch.float64)
    probs = ranks**-1.2 / (ranks**-1.2).sum()  # an exact Zipf law with s = 1.2
    stage = Mirostat(1, tau=3.0, m=100, vocab_size=1000)
    out = stage(torch.zeros(1, 0, dtype=torch.long), probs.log().float()[None])
    eps = 0.2
    k = int(((eps * 2 ** 6.0) / (1 - 1000 ** (-eps))) ** (1 / 1.2))
    assert int(torch.isfinite(out).sum()) == k
