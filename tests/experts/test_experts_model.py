"""Registry, adapter switching, mixed-adapter batches and LoRA training on the real SmolLM2 (tiny settings).

The registry here places its base with an explicit CPU-only ``device_map`` (the device-map code path) and
``max_memory``; that is a different placement from the session's ``smollm`` fixture, so it is a separate model
instance and the shared fixture never sees our LoRA layers.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from asymmetry.experts import ExpertRegistry, ExpertSpec
from asymmetry.experts.base import load_base
from asymmetry.experts.data import ChatExample, mc_messages
from asymmetry.experts.training import CARD_FILE, TrainSettings, train_adapter

from asymmetry.errors import AsymmetryError

EXAMPLES = [
    ChatExample(mc_messages(q, [a], 0))
    for q, a in [
        ("What gas do plants take in?", "carbon dioxide"), ("What is frozen water called?", "ice"),
        ("What force pulls objects to Earth?", "gravity"), ("Which organ pumps blood?", "the heart"),
        ("What is the closest star to Earth?", "the Sun"), ("What do bees make?", "honey"),
    ]
]
TINY = {"max_steps": 2, "batch_size": 2, "max_length": 48, "eval_size": 2, "lr": 5e-3, "checkpoint_every": 1,
        "rank": 4, "alpha": 8}
PLACEMENT = {"device_map": {"": "cpu"}, "max_memory": {"cpu": "8GiB"}}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two tiny adapters trained on SmolLM2; the first one is interrupted after 1 step and resumed."""
    root = tmp_path_factory.mktemp("adapters")
    first = train_adapter("alpha", EXAMPLES, root / "alpha", settings=TrainSettings(**TINY),
                          data_description="tiny test set", progress=False, stop_after=1)
    interrupted = (first, (root / "alpha.checkpoint" / "state.pt").is_file())
    with pytest.raises(AsymmetryError, match="--resume"):
        train_adapter("alpha", EXAMPLES, root / "alpha", settings=TrainSettings(**TINY), progress=False)
    resumed = train_adapter("alpha", EXAMPLES, root / "alpha", settings=TrainSettings(**TINY), resume=True,
                            data_description="tiny test set", progress=False)
    beta = train_adapter("beta", EXAMPLES[::-1], root / "beta", settings=TrainSettings(**{**TINY, "seed": 1}),
                         progress=False, system_prompt="Answer briefly.")
    return {"root": root, "interrupted": interrupted, "alpha": resumed, "beta": beta}


@pytest.fixture(scope="module")
def registry(adapters):
    specs = [
        ExpertSpec(name="alpha", base="smollm2", adapter=str(adapters["root"] / "alpha")),
        ExpertSpec(name="beta", base="smollm2", adapter=str(adapters["root"] / "beta"), system_prompt="Be brief."),
        ExpertSpec(name="plain", base="smollm2", adapter=None),
    ]
    return ExpertRegistry(specs, default="plain", **PLACEMENT)


def test_training_resumes_and_writes_a_card(adapters):
    first, had_checkpoint = adapters["interrupted"]
    assert first is None and had_checkpoint
    alpha = adapters["alpha"]
    assert alpha.resumed_from == 1 and alpha.steps == 2
    assert not (adapters["root"] / "alpha.checkpoint").exists()
    card = json.loads((alpha.adapter_dir / CARD_FILE).read_text())
    assert card["base_model"] == "SmolLM2-135M-Instruct" and card["steps"] == 2 and card["data"] == "tiny test set"
    assert card["final_eval_loss"] is not None and card["eval_loss_before"] is not None
    assert card["examples"] + card["eval_examples"] == len(EXAMPLES)
    assert (alpha.adapter_dir / "adapter_model.safetensors").is_file()
    assert "SmolLM2-135M-Instruct" in (alpha.adapter_dir / "README.md").read_text()
    peft_cfg = json.loads((alpha.adapter_dir / "adapter_config.json").read_text())
    assert peft_cfg["r"] == 4 and peft_cfg["base_model_name_or_path"] == "SmolLM2-135M-Instruct"


def _last_logits(model, tok, kwargs=None, rows=1):
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"].repeat(rows, 1)  # (B, T)
    with torch.no_grad():
        return model(input_ids=ids, **(kwargs or {})).logits[:, -1]  # (B, V)


def test_one_peft_model_switches_adapters_without_reloading(registry):
    model_a, tok = registry.model_for("alpha")
    logits_a = _last_logits(model_a, tok)
    model_b, _ = registry.model_for("beta")
    assert model_b is model_a  # one PeftModel per base
    assert sorted(model_a.peft_config) == ["alpha", "beta"]
    assert registry.active("smollm2") == "beta"
    logits_b = _last_logits(model_b, tok)
    model_p, _ = registry.model_for("plain")
    assert model_p is model_a and registry.active("smollm2") is None
    logits_p = _last_logits(model_p, tok)
    assert not torch.allclose(logits_a, logits_b) and not torch.allclose(logits_a, logits_p)
    registry.model_for("alpha")
    torch.testing.assert_close(_last_logits(model_a, tok), logits_a)  # switching back is exact
    # the CPU-only device map was honoured
    base = registry.base_for("alpha").model
    assert {p.device.type for p in base.parameters()} == {"cpu"}
    assert set(getattr(base, "hf_device_map", {"": "cpu"}).values()) <= {"cpu"}


def test_mixed_adapter_batch_matches_single_expert_rows(registry):
    model, tok = registry.model_for("alpha")
    singles = []
    for name in ("alpha", "plain", "beta"):
        registry.model_for(name)
        singles.append(_last_logits(model, tok))
    kwargs = registry.batch_kwargs(["alpha", "plain", "beta"])
    assert kwargs == {"adapter_names": ["alpha", "__base__", "beta"]}
    mixed = _last_logits(model, tok, kwargs, rows=3)  # (3, V)
    torch.testing.assert_close(mixed, torch.cat(singles), atol=1e-4, rtol=1e-4)


def test_bare_registry_base_equals_an_unwrapped_model(registry, smollm):
    model, tok = registry.model_for("plain")
    torch.testing.assert_close(_last_logits(model, tok), _last_logits(smollm.model, smollm.tokenizer), atol=1e-4,
                               rtol=1e-4)


def test_sampler_generates_through_an_expert(registry):
    from asymmetry.sampling import Generator, SamplerConfig

    model, tok = registry.model_for("alpha")
    gen = Generator(model, tok)
    expert = registry.get("alpha")
    prompt = gen.chat_prompt("What do bees make?", system=expert.system_prompt)
    out = gen.generate(prompt, SamplerConfig(max_tokens=4, greedy=True))
    assert out.tokens and isinstance(out.text, str)


def test_missing_adapter_and_wrong_base(adapters, tmp_path):
    reg = ExpertRegistry([ExpertSpec(name="ghost", adapter=str(tmp_path / "none"))], **PLACEMENT)
    with pytest.raises(AsymmetryError, match="adapter of expert 'ghost' not found.*asymmetry expert train ghost"):
        reg.model_for("ghost")
    foreign = tmp_path / "foreign"
    shutil.copytree(adapters["root"] / "alpha", foreign)
    card = json.loads((foreign / CARD_FILE).read_text())
    card.update(base_model="Llama-3-70B-Instruct", base_folder="llama-3-70b-instruct")
    (foreign / CARD_FILE).write_text(json.dumps(card))
    reg = ExpertRegistry([ExpertSpec(name="law", adapter=str(foreign))], **PLACEMENT)
    with pytest.raises(AsymmetryError, match="trained on Llama-3-70B-Instruct.*retrain"):
        reg.model_for("law")


def test_model_path_that_does_not_exist(tmp_path):
    reg = ExpertRegistry([ExpertSpec(name="big", base=str(tmp_path / "llama-70b"))])
    with pytest.raises(AsymmetryError, match="not found"):
        reg.model_for("big")


def test_quantization_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU error path does not apply")
    with pytest.raises(AsymmetryError, match="needs a CUDA GPU"):
        load_base(quantization="4bit")


def test_option_scoring_shares_the_prompt_exactly(registry):
    """The prefix-shared scorer equals scoring each full sequence, per adapter row of a mixed batch."""
    from asymmetry.experts.scoring import _cloze_rows, mc_metrics, option_scores
    from asymmetry.experts.tokens import answer_logprobs, left_pad

    from asymmetry.datasets import MCQuestion

    model, tok = registry.model_for("alpha")
    registry.batch_kwargs(["alpha"])
    q = MCQuestion("q1", "What do bees make?", ["honey", "steel beams", "ice"], 0, "test")
    shared = option_scores(model, tok, [q], adapter_names=["alpha", "__base__"])
    rows = _cloze_rows(tok, q, None, None)
    batch = left_pad([r[0] for r in rows], [r[1] for r in rows], tok.pad_token_id)
    for names, got in zip((["alpha"] * 3, ["__base__"] * 3), shared):
        with torch.no_grad():
            full = answer_logprobs(model, batch, adapter_names=names).sum(-1)
        torch.testing.assert_close(torch.tensor([s for s, _ in got]), full, atol=2e-3, rtol=1e-4)
    metrics = mc_metrics([q], shared[:1])
    assert set(metrics) == {"accuracy", "accuracy_sum", "gold_prob", "n"} and 0 < metrics["gold_prob"] < 1
