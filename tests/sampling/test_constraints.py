"""Mirostat, grammars and everything stacked, on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest

from asymmetry.sampling import SamplerConfig

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"enum": ["Paris", "Tokyo", "Lima"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


TARGET_PROMPTS = ["Once upon a time", "The history of the Roman Empire", "Photosynthesis is the process",
                  "The old lighthouse keeper", "In the beginning of the war,"]


def _check_targets(gen, tau, prompts, n_tokens):
    # Default settings (temperature 0.7 runs first): below-reach targets need mirostat's own adaptive temperature.
    outs = gen.generate_batch(prompts, SamplerConfig(mirostat=2, tau=tau, max_tokens=n_tokens, seed=1))
    long_enough = [(p, o) for p, o in zip(prompts, outs) if o.stats["completion_tokens"] >= 40]  # EOS may come early
    assert 2 * len(long_enough) >= len(prompts), [o.text for o in outs]
    for prompt, out in long_enough:
        stats = out.stats
        assert len(stats["surprise_bits"]) == stats["completion_tokens"], prompt
        assert abs(stats["mean_surprise_bits"] - tau) <= 1.0, (prompt, stats["mean_surprise_bits"])
        assert 0 <= stats["final_mu"] <= 2 * tau + 20 and not stats["tau_out_of_reach"], (prompt, stats)


@pytest.mark.parametrize("tau", [2.0, 3.0, 5.0, 7.0])
def test_mirostat_v2_targets_hold_in_both_directions(gen, tau):
    _check_targets(gen, tau, TARGET_PROMPTS[:2], 200)


@pytest.mark.slow
@pytest.mark.parametrize("tau", [2.0, 3.0, 5.0, 7.0])
def test_mirostat_v2_targets_hold_on_more_prompts_and_v1(gen, tau):
    _check_targets(gen, tau, TARGET_PROMPTS, 300)
    outs = gen.generate_batch(TARGET_PROMPTS, SamplerConfig(mirostat=1, tau=tau, max_tokens=200, seed=2))
    for out in outs:
        if out.stats["completion_tokens"] >= 40:
            assert abs(out.stats["mean_surprise_bits"] - tau) <= 1.0, (out.stats["mean_surprise_bits"], out.text)


def test_mirostat_out_of_reach_is_reported_and_mu_stays_bounded(gen):
    # Without the adaptive temperature (max heat 1) the tempered distribution cannot reach 7 bits.
    cfg = SamplerConfig(mirostat=2, tau=7.0, mirostat_max_heat=1.0, max_tokens=60, seed=0)
    stats = gen.generate("Once upon a time", cfg).stats
    assert stats["tau_out_of_reach"] and stats["saturated_steps"] > 0, stats
    assert stats["final_mu"] <= max(14.0, math.log2(gen.vocab_size)) + 1.0
    assert stats["mean_surprise_bits"] < 6.0


def test_json_schema_output_parses_and_validates_for_20_seeds(gen):
    prompt = gen.chat_prompt("Describe a person as JSON with name, age and city.")
    cfg = SamplerConfig(temperature=1.0, max_tokens=40, json_schema=json.dumps(SCHEMA))
    for seed in range(20):
        out = gen.generate(prompt, cfg.replace(seed=seed))
        assert out.stats["grammar_completed"], (seed, out.text)
        jsonschema.validate(json.loads(out.text), SCHEMA)


def test_gbnf_grammar_file(gen, tmp_path):
    path = tmp_path / "answer.gbnf"
    path.write_text('root ::= "Answer: " ("yes" | "no") "." " Confidence: " [0-9] "/9"\n')
    out = gen.generate(gen.chat_prompt("Is the sky blue?"), SamplerConfig(seed=1, grammar_file=str(path)))
    assert re.fullmatch(r"Answer: (yes|no)\. Confidence: [0-9]/9", out.text), out.text
    assert out.stats["finish_reason"] == "eos"


def test_everything_stacks_and_stays_in_the_grammar(gen):
    grammar = 'root ::= "[" item (", " item)* "]"\nitem ::= "\\"" [a-z]+ "\\""'
    cfg = SamplerConfig(temperature=1.2, top_k=40, top_p=0.95, min_p=0.02, repeat_penalty=1.2,
                        frequency_penalty=0.1, presence_penalty=0.1, cfg_scale=1.5, mirostat=2, tau=4.0,
                        grammar=grammar, max_tokens=48, seed=3)
    prompt = gen.chat_prompt("List some animals as a JSON array of lowercase strings.")
    neg = gen.chat_prompt("List some numbers.")
    out = gen.generate(prompt, cfg, negative_prompt=neg)
    stats = out.stats
    assert stats["stages"] == ["penalties", "cfg", "grammar", "temperature", "top_k", "top_p", "min_p", "mirostat"]
    assert stats["rows"] == 2 and stats["mean_surprise_bits"] is not None
    # Every generated token was allowed: the grammar's own matcher accepts the whole output as a prefix.
    import xgrammar as xgr

    from asymmetry.sampling.grammar import compile_grammar

    matcher = xgr.GrammarMatcher(compile_grammar(gen.tokenizer, gen.vocab_size, grammar=grammar))
    assert all(matcher.accept_token(t) for t in out.tokens), out.text
    assert out.text.startswith('["')
    if stats["finish_reason"] == "eos":
        assert matcher.is_completed() and all(isinstance(x, str) for x in json.loads(out.text))


def test_generate_cli_json_output(capsys):
    from asymmetry.cli import main

    rc = main(["generate", "Count: one, two,", "--max-tokens", "6", "--seed", "4", "--mirostat", "2", "--tau", "4",
               "--cfg-scale", "1.5", "--negative-prompt", "Letters:", "--repeat-penalty", "1.1", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"text", "tokens", "stats"} and len(data["tokens"]) <= 6
    assert data["stats"]["rows"] == 2 and data["stats"]["final_mu"] is not None
    assert isinstance(data["stats"]["mean_surprise_bits"], float)


def test_generate_cli_bad_grammar_is_one_line_error(tmp_path, capsys):
    from asymmetry.cli import main

    bad = tmp_path / "bad.gbnf"
    bad.write_text('root ::= "a" | ("b"')
    assert main(["generate", "x", "--grammar", str(bad), "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: grammar file") and "line 1, column" in err and err.count("\n") == 1
