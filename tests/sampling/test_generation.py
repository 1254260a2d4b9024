"""The decoding loop on the real SmolLM2-135M-Instruct: parity with HF, seeds, batched CFG, streaming, stops."""

from __future__ import annotations

import torch

from asymmetry.sampling import Branch, SamplerConfig
from asymmetry.sampling.stages import CFG

PROMPT = "The three primary colors are"


def test_greedy_equals_hf_generate_token_for_token(gen, smollm):
    ids = smollm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = smollm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                    min_new_tokens=24, pad_token_id=smollm.tokenizer.eos_token_id)
    ours = gen.generate(PROMPT, SamplerConfig(greedy=True, max_tokens=24))
    assert ours.tokens == ref[0, ids.shape[1]:].tolist()
    assert ours.stats["forwards"] == 24 and ours.stats["rows"] == 1


def test_same_seed_same_text_and_batch_matches_single(gen):
    cfg = SamplerConfig(temperature=0.9, top_k=50, max_tokens=12, seed=11)
    a, b = gen.generate(PROMPT, cfg), gen.generate(PROMPT, cfg)
    c = gen.generate(PROMPT, cfg.replace(seed=12))
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens
    # A batch of prompts of different lengths (left padding, mask, positions) gives each prompt's greedy text.
    prompts = ["Paris is the capital of", "Water boils at a temperature of"]
    greedy = SamplerConfig(greedy=True, max_tokens=10)
    batch = gen.generate_batch(prompts, greedy)
    assert [g.tokens for g in batch] == [gen.generate(p, greedy).tokens for p in prompts]
    assert all(g.stats["rows"] == 2 for g in batch)


def test_cfg_scale_one_gives_the_same_text_as_no_cfg(gen):
    base = SamplerConfig(temperature=0.8, top_p=0.95, max_tokens=16)
    for seed in (1, 2):
        plain = gen.generate(PROMPT, base.replace(seed=seed))
        guided = gen.generate(PROMPT, base.replace(seed=seed, cfg_scale=1.0), negative_prompt="Write nonsense.")
        assert guided.stats["rows"] == 2 and "cfg" in guided.stats["stages"]
        assert guided.tokens == plain.tokens


class RecordingCFG(CFG):
    """The CFG stage reading a caller-named branch, recording what it returns (also exercises the branch API)."""

    branch_names = ("neg",)

    def __init__(self, scale):
        super().__init__(scale)
        self.seen = []

    def __call__(self, input_ids, scores):
        out = super().__call__(input_ids, scores)
        self.seen.append((scores.clone(), self.branch_scores.clone(), out.clone()))
        return out


def test_batched_cfg_matches_unbatched_two_pass_reference(gen, smollm):
    model, tok = smollm.model, smollm.tokenizer
    cond_ids = tok(PROMPT, return_tensors="pt").input_ids
    neg_ids = tok("Answer in French:", return_tensors="pt").input_ids
    scale, n = 1.8, 12
    # Ours: one batched forward per step (two rows, left padded), CFG applied to the greedy chain.
    rec = RecordingCFG(scale)
    ours = gen.generate(cond_ids[0].tolist(), SamplerConfig(greedy=True, max_tokens=n),
                        branches=[Branch("neg", neg_ids[0].tolist())], combiner=rec)
    assert ours.stats["rows"] == 2 and ours.stats["forwards"] == n
    for cond, uncond, out in rec.seen:  # the stage computes uncond + s * (cond - uncond) on log-probs
        lc, lu = cond.log_softmax(-1), uncond.log_softmax(-1)
        torch.testing.assert_close(out, lu + scale * (lc - lu))
    # Reference: two separate unbatched passes with their own caches.
    tokens, caches, ids = [], [None, None], [cond_ids, neg_ids]
    with torch.inference_mode():
        for step in range(n):
            logits = []
            for i in range(2):
                o = model(input_ids=ids[i], cache=caches[i], use_cache=True)
                caches[i] = o.cache
                logits.append(o.logits[:, -1].float())
            lc, lu = logits[0].log_softmax(-1), logits[1].log_softmax(-1)
            guided = lu + scale * (lc - lu)
            torch.testing.assert_close(rec.seen[step][2], guided, atol=2e-3, rtol=1e-3)
            token = int(guided.argmax())
            tokens.append(token)
            ids = [torch.tensor([[token]]), torch.tensor([[token]])]
    assert ours.tokens == tokens


def test_stream_deltas_join_to_text_and_stop_strings_cut(gen):
    cfg = SamplerConfig(temperature=0.7, max_tokens=40, seed=5)
    prompt = gen.chat_prompt("List five fruits, one per line.")
    full = gen.generate(prompt, cfg)
    stream = gen.stream(prompt, cfg)
    deltas = list(stream)
    assert "".join(deltas) == stream.result.text == full.text
    assert len(deltas) > 3
    # Stop on a string that occurs in the unconstrained output: the text ends right before it.
    stop = full.text.strip().split()[1][:3]
    cut = gen.generate(prompt, cfg.replace(stop=[stop]))
    assert cut.stats["finish_reason"] == "stop"
    assert stop not in cut.text and full.text.startswith(cut.text)
    streamed = "".join(gen.stream(prompt, cfg.replace(stop=[stop])))
    assert streamed == cut.text
