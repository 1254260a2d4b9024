"""A GGUF loads straight into the model: its 4-bit blocks are int4 layers as they are, the rest is dequantised in
memory, the names and config are transformers' own; nothing but config and tokenizer files is written to the home."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from asymmetry import defaults
from asymmetry.errors import AsymmetryError
from asymmetry.experts.base import Placement, builtin_gguf, load_model, models_dir, resolve_model
from asymmetry.experts.gguf import GgufFile, build_config, int4_blocks
from asymmetry.experts.quantize import Int4Linear, Int8Linear

PROMPT = "Rome is the capital of Italy, Madrid is the capital of Spain, and the capital of France is"


def _int4_matches_gguf_py(t):
    """The int4 form of a 4-bit GGUF tensor equals gguf-py's dequantisation (float32 scales), and the layer built
    from it is that within a tenth of a quantization step (its scale and zero rounded to bf16)."""
    n, k = t.shape
    reference = torch.from_numpy(quants.dequantize(np.array(t.data), GGMLQuantizationType(t.ggml_type))).reshape(n, k)
    q, scale_zeros = int4_blocks(t)  # (N, K), (K/32, N, 2)
    scale = scale_zeros[..., 0].t().repeat_interleave(32, dim=1)  # (N, K)
    zero = scale_zeros[..., 1].t().repeat_interleave(32, dim=1)
    torch.testing.assert_close((q.float() - 8) * scale + zero, reference, rtol=0, atol=1e-6)
    layer = Int4Linear.from_quantized(q, scale_zeros, 32)
    error = (layer.dequantized().float() - reference).abs()
    assert (error / scale.abs().clamp_min(1e-12)).max() < 0.1
    x = torch.randn(3, k)
    torch.testing.assert_close(layer(x), x @ reference.t(), rtol=0.02, atol=0.03 * reference.abs().max().item())


def test_q4_k_blocks_of_the_default_base_are_its_weights_as_int4():
    gguf = GgufFile(builtin_gguf("qwen2.5-coder-1.5b"))
    for name in ("blk.0.attn_q.weight", "blk.27.attn_k.weight", "blk.3.ffn_up.weight"):
        t = gguf.tensors[name]
        assert t.ggml_type == GGMLQuantizationType.Q4_K
        _int4_matches_gguf_py(t)
    assert gguf.mostly_4bit() and gguf.parameter_count() > 1_500_000_000


def test_smollm2_q4_1_blocks_are_its_weights_as_int4():
    gguf = GgufFile(defaults.smollm_gguf_path())
    t = gguf.tensors["blk.0.ffn_gate.weight"]
    assert t.ggml_type == GGMLQuantizationType.Q4_1
    _int4_matches_gguf_py(t)


def test_smollm2_loads_as_transformers_loads_it_and_int4_stays_close(smollm):
    """The direct float load equals transformers' own GGUF loader (config, names, llama's q/k un-permutation); the
    int4 load (every linear from its Q4_1 blocks) keeps the float model's next token, logits within 1.0 (bf16
    activations and scales; the logits span about 30)."""
    path = defaults.smollm_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ours = smollm.loaded.model
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert smollm.tokenizer(PROMPT).input_ids == tokenizer(PROMPT).input_ids
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    int4 = load_model("smollm2", Placement(quantize="int4")).model
    assert sum(isinstance(m, Int4Linear) for m in int4.modules()) == 7 * 30  # every linear; the tied head decodes through an int8 copy (TiedInt8Head)
    with torch.no_grad():
        want = reference(ids).logits
        torch.testing.assert_close(ours(ids).logits, want, rtol=0, atol=1e-5)
        got = int4(ids).logits
    assert got[0, -1].argmax() == want[0, -1].argmax()
    assert (got - want).abs().max() < 1.0


def test_config_is_transformers_own_and_only_small_files_are_written(tmp_path, monkeypatch):
    path = defaults.smollm_gguf_path()
    ours = build_config(GgufFile(path)).to_dict()
    theirs = AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
    assert {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)} == {"_name_or_path"}
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path / "home"))
    loaded = load_model("smollm2", Placement(quantize="int4"))
    assert loaded.path.parent == models_dir()
    written = sum(f.stat().st_size for f in (tmp_path / "home").rglob("*") if f.is_file())
    assert written < 20_000_000  # config and tokenizer (about 3.5 MB), no weights


def test_the_default_base_is_int4_from_its_gguf_without_a_weights_folder(pool):
    base = pool.base("qwen2.5-coder-1.5b")
    _, folder = resolve_model("qwen2.5-coder-1.5b")
    assert base.path == folder and not list(folder.glob("*.safetensors"))
    layers = [m for m in base.loaded.model.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    int4 = sum(isinstance(m, Int4Linear) for m in layers)
    assert int4 == 28 * 7 - 28  # Q4_K linears as int4; the Q6_K ones (half the v and down projections) int8
    head = base.loaded.model.get_output_embeddings()
    assert isinstance(head, Int8Linear) and head.head  # marked: it always decodes with the weight-only kernel


def test_a_damaged_or_truncated_gguf_is_a_clear_error(tmp_path):
    data = defaults.smollm_gguf_path().read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(AsymmetryError, match=r"truncated\.gguf is truncated .*copy or download it again"):
        load_model(str(truncated))
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"NOPE" + data[4:])
    with pytest.raises(AsymmetryError, match=r"cannot read GGUF file .*damaged\.gguf .*damaged or not a GGUF file"):
        load_model(str(damaged))
