"""Registry, adapter switching, mixed-adapter batches and LoRA training on the real SmolLM2 (tiny settings).

The registry here places its base with an explicit CPU-only ``device_map`` (the device-map code path) and
``max_memory``: a placement of its own, so a separate model instance in the pool.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from asymmetry.errors import AsymmetryError
from asymmetry.experts import ExpertRegistry, ExpertSpec, Placement, load_model
from asymmetry.experts.data import ChatExample, mc_messages
from asymmetry.experts.training import CARD_FILE, AdapterTrainSettings, train_adapter
from asymmetry.integrity import write_folder_checksums

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
    first = train_adapter("alpha", EXAMPLES, root / "alpha", settings=AdapterTrainSettings(**TINY),
                          data_description="tiny test set", progress=False, stop_after=1)
    interrupted = (first, (root / "alpha.checkpoint" / "state.pt").is_file())
    with pytest.raises(AsymmetryError, match="--resume"):
        train_adapter("alpha", EXAMPLES, root / "alpha", settings=AdapterTrainSettings(**TINY), progress=False)
    resumed = train_adapter("alpha", EXAMPLES, root / "alpha", settings=AdapterTrainSettings(**TINY), resume=True,
                            data_description="tiny test set", progress=False)
    beta = train_adapter("beta", EXAMPLES[::-1], root / "beta", settings=AdapterTrainSettings(**{**TINY, "seed": 1}),
                         progress=False, system_prompt="Answer briefly.")
    return {"root": root, "interrupted": interrupted, "alpha": resumed, "beta": beta}


@pytest.fixture(scope="module")
def registry(adapters, pool):
    specs = [
        ExpertSpec(name="alpha", base="smollm2", adapter=str(adapters["root"] / "alpha")),
        ExpertSpec(name="beta", base="smollm2", adapter=str(adapters["root"] / "beta"), system_prompt="Be brief."),
        ExpertSpec(name="plain", base="smollm2", adapter=None),
    ]
    return ExpertRegistry(specs, default="plain", pool=pool, **PLACEMENT)


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


def _last_logits(handle, kwargs=None, rows=1):
    """(B, V) next-token logits of a fixed prompt through an ExpertModel (its adapter named per row)."""
    ids = handle.tokenizer("The capital of France is", return_tensors="pt")["input_ids"].repeat(rows, 1)  # (B, T)
    kwargs = handle.forward_kwargs(rows) if kwargs is None else kwargs
    with torch.no_grad(), handle.lock:
        return handle.model(input_ids=ids, **kwargs).logits[:, -1]  # (B, V)


def test_one_peft_model_serves_every_adapter_per_row(registry):
    alpha, beta, plain = registry.model("alpha"), registry.model("beta"), registry.model("plain")
    assert alpha.model is beta.model is plain.model  # one PeftModel per base
    assert sorted(alpha.model.peft_config) == ["alpha", "beta"]
    assert (alpha.row_name, beta.row_name, plain.row_name) == ("alpha", "beta", "__base__")
    logits_a, logits_b, logits_p = _last_logits(alpha), _last_logits(beta), _last_logits(plain)
    assert not torch.allclose(logits_a, logits_b) and not torch.allclose(logits_a, logits_p)
    torch.testing.assert_close(_last_logits(alpha), logits_a)  # nothing was switched: alpha again is exact
    # a forward that names no adapter is the bare base, whatever was attached
    torch.testing.assert_close(_last_logits(plain, kwargs={}), logits_p)
    # the CPU-only device map was honoured
    base = registry.base_for("alpha").loaded.model
    assert {p.device.type for p in base.parameters()} == {"cpu"}
    assert set(getattr(base, "hf_device_map", {"": "cpu"}).values()) <= {"cpu"}


def test_mixed_adapter_batch_matches_single_expert_rows(registry):
    singles = [_last_logits(registry.model(name)) for name in ("alpha", "plain", "beta")]
    kwargs = registry.batch_kwargs(["alpha", "plain", "beta"])
    assert kwargs == {"adapter_names": ["alpha", "__base__", "beta"]}
    mixed = _last_logits(registry.model("alpha"), kwargs, rows=3)  # (3, V)
    torch.testing.assert_close(mixed, torch.cat(singles), atol=1e-4, rtol=1e-4)


def test_bare_registry_base_equals_an_unwrapped_model(registry, smollm):
    torch.testing.assert_close(_last_logits(registry.model("plain")), _last_logits(smollm.bare()), atol=1e-4,
                               rtol=1e-4)


def test_two_registries_on_one_pool_share_the_base(adapters, pool):
    specs = [ExpertSpec(name="alpha", base="smollm2", adapter=str(adapters["root"] / "alpha"))]
    first, second = ExpertRegistry(specs, pool=pool), ExpertRegistry(specs, pool=pool)
    assert first.model("alpha").base is second.model("alpha").base is pool.base("smollm2")
    assert pool.base("smollm2").adapters["alpha"] == str(adapters["root"] / "alpha")  # attached once, by name
    elsewhere = ExpertRegistry(specs, pool=pool, **PLACEMENT)  # another placement is another model
    assert elsewhere.model("alpha").base is not first.model("alpha").base


def test_sampler_generates_through_an_expert(registry):
    from asymmetry.sampling import Generator, SamplerConfig

    alpha = registry.model("alpha")
    gen = Generator(alpha.model, alpha.tokenizer, lock=alpha.lock)
    prompt = gen.chat_prompt("What do bees make?", system=registry.get("alpha").system_prompt)
    config = SamplerConfig(max_tokens=4, greedy=True)
    out = gen.generate(prompt, config, row_kwargs=alpha.row_kwargs())
    assert out.tokens and isinstance(out.text, str)
    bare = gen.generate(prompt, config, row_kwargs=registry.model("plain").row_kwargs())
    assert bare.tokens == gen.generate(prompt, config).tokens  # no adapter named: the bare base


def test_missing_adapter_and_wrong_base(adapters, tmp_path):
    reg = ExpertRegistry([ExpertSpec(name="ghost", adapter=str(tmp_path / "none"))], **PLACEMENT)
    with pytest.raises(AsymmetryError, match="adapter of expert 'ghost' not found.*asymmetry expert train ghost"):
        reg.model("ghost")
    foreign = tmp_path / "foreign"
    shutil.copytree(adapters["root"] / "alpha", foreign)
    card = json.loads((foreign / CARD_FILE).read_text())
    card.update(base_model="Llama-3-70B-Instruct", base_folder="llama-3-70b-instruct")
    (foreign / CARD_FILE).write_text(json.dumps(card))
    reg = ExpertRegistry([ExpertSpec(name="law", adapter=str(foreign))], **PLACEMENT)
    with pytest.raises(AsymmetryError, match=f"{CARD_FILE} is damaged.*asymmetry expert train law"):
        reg.model("law")  # the card no longer matches the SHA256SUMS written with the adapter
    write_folder_checksums(foreign)
    reg = ExpertRegistry([ExpertSpec(name="law", adapter=str(foreign))], **PLACEMENT)
    with pytest.raises(AsymmetryError, match="trained on Llama-3-70B-Instruct.*retrain"):
        reg.model("law")


def test_model_path_that_does_not_exist(tmp_path):
    reg = ExpertRegistry([ExpertSpec(name="big", base=str(tmp_path / "llama-70b"))])
    with pytest.raises(AsymmetryError, match="not found"):
        reg.model("big")


def test_quantization_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the CPU error path does not apply")
    with pytest.raises(AsymmetryError, match="needs a CUDA GPU"):
        load_model(placement=Placement(quantization="4bit"))
