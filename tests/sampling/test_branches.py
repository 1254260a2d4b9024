"""The branch API with peft's per-row ``adapter_names``: two LoRA adapters on one base, blended in one forward."""

from __future__ import annotations

import pytest
import torch

from asymmetry.errors import AsymmetryError
from asymmetry.sampling import Branch, Generator, SamplerConfig
from asymmetry.sampling.stages import Mixture


class RecordingMixture(Mixture):
    def __init__(self, weights, names):
        super().__init__(weights, names)
        self.seen = []

    def __call__(self, input_ids, scores):
        out = super().__call__(input_ids, scores)
        self.seen.append(out.clone())
        return out


@pytest.fixture(scope="module")
def two_adapters():
    from peft import LoraConfig, get_peft_model

    from asymmetry.experts import load_model

    # a private copy (not from the pool): these random adapters are trained into the model object they wrap
    private = load_model()
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(private.model, cfg, adapter_name="a")
    model.add_adapter("b", cfg)
    model.eval()
    return model, private.tokenizer


def test_mixture_of_two_adapters_in_one_forward_matches_separate_passes(two_adapters):
    model, tok = two_adapters
    gen = Generator(model, tok)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    weights, n = [0.7, 0.3], 4
    mix = RecordingMixture(weights, ["other"])
    out = gen.generate(ids[0].tolist(), SamplerConfig(greedy=True, max_tokens=n), row_kwargs={"adapter_names": "a"},
                       branches=[Branch("other", ids[0].tolist(), {"adapter_names": "b"})], combiner=mix)
    assert out.stats["rows"] == 2 and out.stats["forwards"] == n
    seq = ids
    with torch.inference_mode():
        for step in range(n):
            lp = [model(input_ids=seq, adapter_names=[name]).logits[:, -1].float().log_softmax(-1) for name in "ab"]
            assert not torch.allclose(lp[0], lp[1], atol=1e-3)  # the adapters really differ
            ref = torch.logsumexp(torch.stack([lp[0] + torch.tensor(0.7).log(), lp[1] + torch.tensor(0.3).log()]), 0)
            torch.testing.assert_close(mix.seen[step], ref, atol=2e-3, rtol=1e-3)
            seq = torch.cat([seq, ref.argmax(-1, keepdim=True)], 1)
    assert out.tokens == seq[0, ids.shape[1]:].tolist()


def test_branch_errors_name_the_problem(gen):
    with pytest.raises(AsymmetryError, match="combiner reads branch 'x'"):
        gen.generate("hi", SamplerConfig(max_tokens=1), combiner=Mixture([1, 1], ["x"]))
    with pytest.raises(AsymmetryError, match="missing on some rows"):
        gen.generate("hi", SamplerConfig(max_tokens=1), branches=[Branch("x", "yo", {"adapter_names": "b"})],
                     combiner=Mixture([1, 1], ["x"]))
    with pytest.raises(AsymmetryError, match="outside the vocabulary"):
        gen.generate([10**7], SamplerConfig(max_tokens=1))
