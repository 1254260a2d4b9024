"""Experts config, registry lookup and training-data readers (no model needed)."""

from __future__ import annotations

import json

import pytest

from asymmetry.config import Config
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.experts import ExpertRegistry, ExpertsConfig
from asymmetry.experts.data import (
    DEFAULT_RECIPES,
    default_examples,
    load_training_file,
    mc_messages,
    split_questions,
    write_jsonl,
)
from asymmetry.experts.prompts import build_messages, render_prompt, with_system


def test_builtin_experts_and_default():
    reg = ExpertRegistry.from_config(ExpertsConfig())
    assert reg.names() == ["science", "commonsense", "general", "scholar"]
    assert reg.default == "general"
    assert {reg.get(n).base for n in reg.names()} == {"qwen2.5-coder-1.5b"}  # one shared base
    assert all(reg.get(n).sampler["temperature"] == 0 for n in reg.names())  # deterministic factual answers
    assert reg.get("science").negative_prompt


def test_small_lineup_keeps_the_lora_expert_that_beats_its_base():
    reg = ExpertRegistry.from_config(ExpertsConfig(lineup="small"))
    assert reg.names() == ["science", "commonsense", "general", "scholar"]
    assert reg.get("general").adapter is None and reg.get("science").adapter is None  # science's LoRA: README
    assert reg.get("scholar").base == "qwen2.5-coder-0.5b"
    assert reg.get("commonsense").adapter.endswith("experts/adapters/commonsense")
    with pytest.raises(ConfigError, match="experts.lineup"):
        ExpertsConfig(lineup="huge")
    with pytest.raises(ConfigError, match="experts.quantize"):
        ExpertsConfig(quantize="int3")


def test_experts_from_toml_tables():
    cfg = Config.from_dict({"experts": {"default": "law", "experts": [
        {"name": "law", "base": "smollm2", "adapter": "/tmp/law", "k": 2, "sampler": {"temperature": 0.2},
         "system_prompt": "You are a lawyer.", "retrieval": False},
        {"name": "bare", "base": "smollm2"},
    ]}})
    reg = ExpertRegistry.from_config(cfg.experts)
    assert reg.names() == ["law", "bare"]
    law = reg.get("law")
    assert (law.k, law.retrieval, law.sampler, law.adapter) == (2, False, {"temperature": 0.2}, "/tmp/law")
    msgs = law.messages("Is this legal?", passages="[1] A statute.")
    assert msgs[0]["role"] == "system" and "A statute." in msgs[0]["content"] and msgs[-1]["content"] == "Is this legal?"


@pytest.mark.parametrize("experts, field", [
    ([{"name": "a"}, {"name": "a"}], "name"),
    ([{"name": "a", "colour": "red"}], "colour"),
    ([{"base": "smollm2"}], "name"),
    ([{"name": "a b"}], "name"),
    ([{"name": "a", "k": -1}], "k"),
    ([{"name": "a", "prompt_template": "no jinja here"}], "prompt_template"),
])
def test_bad_expert_tables_name_the_field(experts, field):
    with pytest.raises(ConfigError) as err:
        ExpertsConfig(default="a", experts=experts)
    assert field in str(err.value)


def test_bad_section_values():
    with pytest.raises(ConfigError, match="experts.default"):
        ExpertsConfig(default="nobody")
    with pytest.raises(ConfigError, match="quantization"):
        ExpertsConfig(quantization="3bit")
    with pytest.raises(ConfigError, match="dtype"):
        ExpertsConfig(dtype="float8")


def test_unknown_expert_lists_the_choices():
    reg = ExpertRegistry.from_config(ExpertsConfig())
    with pytest.raises(AsymmetryError, match="unknown expert 'physics'.*science, commonsense, general, scholar"):
        reg.get("physics")


def test_mixed_batch_needs_one_base():
    reg = ExpertRegistry.from_config(ExpertsConfig(lineup="small"))
    with pytest.raises(AsymmetryError, match="one base"):
        reg.batch_kwargs(["science", "scholar"])


def test_jsonl_malformed_lines_are_reported_by_number(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}),
        "{not json",
        json.dumps({"instruction": "Name a colour.", "output": "Blue"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # no assistant answer
        "",
        json.dumps({"prompt": "Capital of France?", "completion": "Paris"}),
        json.dumps(["a list"]),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(AsymmetryError) as err:
        load_training_file(path)
    msg = str(err.value)
    assert "3 malformed line(s)" in msg and "line 2" in msg and "line 4" in msg and "line 7" in msg
    assert "--skip-bad-lines" in msg
    report = load_training_file(path, on_error="skip")
    assert [n for n, _ in report.bad_lines] == [2, 4, 7]
    assert [ex.messages[-1]["content"] for ex in report.examples] == ["4", "Blue", "Paris"]


def test_mc_csv_rows(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text(
        "prompt,A,B,C,D,E,answer\n"
        "Which is a gas?,Oxygen,Iron,Salt,Wood,Glass,A\n"
        "Bad answer letter,x,y,z,w,v,F\n"
        "Which planet is red?,Venus,Mars,,Jupiter,,B\n",
        encoding="utf-8",
    )
    with pytest.raises(AsymmetryError, match="row 3: answer 'F'"):
        load_training_file(path)
    report = load_training_file(path, on_error="skip", style="lettered")
    assert [n for n, _ in report.bad_lines] == [3]
    last = report.examples[1].messages
    assert "B. Mars" in last[0]["content"] and "C. Jupiter" in last[0]["content"] and last[1]["content"] == "B"
    cloze = load_training_file(path, on_error="skip").examples[0].messages
    assert cloze == [{"role": "user", "content": "Which is a gas?"}, {"role": "assistant", "content": "Oxygen"}]


def test_missing_or_unsupported_files(tmp_path):
    with pytest.raises(AsymmetryError, match="does not exist"):
        load_training_file(tmp_path / "nope.jsonl")
    bad = tmp_path / "data.txt"
    bad.write_text("x")
    with pytest.raises(AsymmetryError, match="unsupported extension"):
        load_training_file(bad)
    csv = tmp_path / "q.csv"
    csv.write_text("text,label\nx,1\n")
    with pytest.raises(AsymmetryError, match="needs columns prompt"):
        load_training_file(csv)


def test_mc_messages_styles():
    assert mc_messages("Q?", ["a", "b"], 1) == [{"role": "user", "content": "Q?"},
                                                 {"role": "assistant", "content": "b"}]
    lettered = mc_messages("Q?", ["a", "b"], None, "lettered")
    assert len(lettered) == 1 and "A. a\nB. b" in lettered[0]["content"]
    with pytest.raises(AsymmetryError, match="style"):
        mc_messages("Q?", ["a"], 0, "essay")


def test_mc_messages_with_a_system_prompt():
    assert mc_messages("Q?", ["a", "b"], 0, system="Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "a"}]
    assert mc_messages("Q?", ["a"], None, system="S") == with_system(mc_messages("Q?", ["a"], None), "S")


def test_build_messages_order_and_passages():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    msgs = build_messages("Why?", system="Be brief.", passages="[1] A fact.", history=history)
    assert msgs == [{"role": "system", "content": "Be brief.\n\nPassages:\n[1] A fact."}, *history,
                    {"role": "user", "content": "Why?"}]
    assert build_messages("Why?", passages="[1] A fact.")[0] == {"role": "system", "content": "Passages:\n[1] A fact."}
    assert build_messages("Why?", system="", passages=None) == [{"role": "user", "content": "Why?"}]
    history_copy = list(history)
    build_messages("Again?", history=history).append({"role": "user", "content": "x"})
    assert history == history_copy  # the caller's list is not changed


def test_render_prompt_passes_template_and_generation_prompt():
    class Tok:
        def apply_chat_template(self, messages, **kw):
            return kw

    msgs = build_messages("Q?")
    assert render_prompt(Tok(), msgs) == {"tokenize": False, "add_generation_prompt": True}
    assert render_prompt(Tok(), msgs, "{{ x }}", add_generation_prompt=False) == {
        "tokenize": False, "add_generation_prompt": False, "chat_template": "{{ x }}"}


def test_write_jsonl_round_trips(tmp_path):
    examples = load_training_file(_tiny_jsonl(tmp_path)).examples
    out = write_jsonl(examples, tmp_path / "sub" / "copy.jsonl")
    assert [ex.messages for ex in load_training_file(out).examples] == [ex.messages for ex in examples]
    assert [p.name for p in out.parent.iterdir()] == ["copy.jsonl"]  # no temp file left behind


def _tiny_jsonl(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2? é"},
                                             {"role": "assistant", "content": "4"}]}) + "\n"
                    + json.dumps({"prompt": "Capital of France?", "completion": "Paris"}) + "\n", encoding="utf-8")
    return path


def test_validation_halves_are_disjoint_and_cover():
    train = {q.id for q in split_questions("sciq", "validation:train")}
    held = {q.id for q in split_questions("sciq", "validation:eval")}
    full = {q.id for q in split_questions("sciq", "validation")}
    assert train and held and not train & held and train | held == full


def test_default_recipes_use_no_test_split_and_build_examples():
    for recipe in DEFAULT_RECIPES.values():
        assert all(not split.startswith("test") for _, split, _ in recipe["train"])
        assert all(not split.startswith("test") for _, split in recipe.get("eval", ()))  # grounded: no MC eval
    examples = default_examples("commonsense")
    assert len(examples) == 7500
    assert {ex.source for ex in examples} == {"commonsense_qa", "social_iqa", "hellaswag"}
    assert examples == default_examples("commonsense")  # reproducible
