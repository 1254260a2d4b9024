"""Control tokens that steer the sampler (issue 17): the vocabulary as config data, tokens added to a base, segments,
the CFG negative switch against a two-pass reference, control tokens kept out of the text, and the same in the
continuous batch the server runs (per row, next to rows without controls)."""

from __future__ import annotations

import json

import pytest
import torch

from asymmetry.config import Config
from asymmetry.errors import ConfigError
from asymmetry.sampling import Generator, SamplerConfig
from asymmetry.sampling.batch import BatchRunner, DecodeBatch, new_slot
from asymmetry.sampling.controls import ControlsConfig, add_control_tokens
from asymmetry.sampling.stages import BranchCombiner

VOCAB = ControlsConfig()


class ForceAt(BranchCombiner):
    """Test stage: at generated step ``step`` only ``token`` may be chosen (an expert that emits a control)."""

    name = "force"

    def __init__(self, prompt_len: int, step: int, token: int):
        super().__init__()
        self.at, self.token = prompt_len + step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[-1] != self.at:
            return scores
        out = torch.full_like(scores, float("-inf"))
        out[:, self.token] = 0.0
        return out


@pytest.fixture(scope="module")
def ctl():
    """A private SmolLM2 copy with the control tokens added (the pool's shared base stays as it is)."""
    from asymmetry.experts import load_model

    private = load_model()
    n_before = private.model.get_input_embeddings().weight.shape[0]
    assert add_control_tokens(private.model, private.tokenizer, VOCAB.tokens) == len(VOCAB.tokens)
    assert add_control_tokens(private.model, private.tokenizer, VOCAB.tokens) == 0  # idempotent
    return private.model, private.tokenizer, n_before


def tid(tok, name):
    return tok.convert_tokens_to_ids(VOCAB.get(name).token)


def test_vocabulary_is_config_data_and_errors_name_the_field():
    names = [c.name for c in VOCAB.controls]
    assert {"recall", "explain", "formal", "plain", "tau=3", "neg=formal", "neg=none"} <= set(names)
    assert len(set(VOCAB.tokens)) == len(VOCAB.tokens) and VOCAB.get("recall").token == "<|recall|>"
    assert VOCAB.get("formal").negative == "plain" and VOCAB.get("plain").negative == "formal"
    custom = Config.from_dict({"controls": {"vocabulary": {"cite": {"tau": 1.0, "mirostat": 2}},
                                            "rubrics": {"pirate": "Talk like a pirate."}, "disabled": ["plain"]}})
    names = [c.name for c in custom.controls.controls]
    assert "cite" in names and "neg=pirate" in names and "plain" not in names
    with pytest.raises(ConfigError, match=r"controls.disabled='bogus'.*unknown control; known controls: recall"):
        ControlsConfig(disabled=["bogus"])
    with pytest.raises(ConfigError, match=r"controls.vocabulary.cite.colour.*may set only"):
        ControlsConfig(vocabulary={"cite": {"colour": "red"}})
    with pytest.raises(ConfigError, match=r"controls.vocabulary.cite.tau=-1.*positive target"):
        ControlsConfig(vocabulary={"cite": {"tau": -1}})
    with pytest.raises(ConfigError, match=r"controls.vocabulary.cite.negative='rude'.*unknown rubric"):
        ControlsConfig(vocabulary={"cite": {"negative": "rude"}})
    with pytest.raises(ConfigError, match=r"controls.vocabulary.Bad"):
        ControlsConfig(vocabulary={"Bad": {}})


def test_controls_list_cli(capsys):
    from asymmetry.cli import main

    assert main(["controls", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in data["controls"]}
    assert by_name["tau=2"]["token"] == "<|tau=2|>" and by_name["tau=2"]["sampler"]["tau"] == 2.0
    assert by_name["formal"]["negative"] == "plain" and "formal" in data["rubrics"]
    assert main(["controls", "list"]) == 0
    assert "<|recall|>" in capsys.readouterr().out


def test_added_tokens_leave_ordinary_logits_and_sampling_unchanged(ctl, smollm):
    model, tok, n_before = ctl
    assert len(tok) == n_before + len(VOCAB.tokens)
    text = "The capital of France is Paris, and the capital of Spain is"
    ids = smollm.tokenizer(text, return_tensors="pt")
    assert tok(text)["input_ids"] == ids.input_ids[0].tolist()
    with torch.inference_mode():
        before = smollm.model(**ids).logits  # (1, T, V)
        after = model(**ids).logits  # (1, T, V + C)
    # the tied head gains 15 rows, so the head GEMM has another shape and float32 rounding moves a few logits by up
    # to ~3e-5 (of logits ~20 in size); a changed row would move them by whole units
    torch.testing.assert_close(after[..., :n_before], before, atol=1e-4, rtol=1e-5)
    cfg = SamplerConfig(max_tokens=24, seed=3, top_k=40)
    plain = Generator(smollm.model, smollm.tokenizer).generate("Once upon a time", cfg)
    steered = Generator(model, tok, controls=VOCAB).generate("Once upon a time", cfg)
    assert steered.tokens == plain.tokens and steered.text == plain.text
    assert steered.stats["rows"] == 1 and steered.stats["segments"][0]["control"] is None


def test_control_token_in_prompt_sets_the_next_segments_tau(ctl):
    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    means = {}
    for tau in (2, 7):
        out = gen.generate(f"<|tau={tau}|>Once upon a time", SamplerConfig(max_tokens=80, seed=1))
        (seg,) = out.stats["segments"]
        assert seg["control"] == f"tau={tau}" and seg["tau"] == float(tau) and "mirostat" in out.stats["stages"]
        assert abs(seg["mean_surprise_bits"] - tau) <= 1.0, seg
        means[tau] = seg["mean_surprise_bits"]
        assert "<|" not in out.text
    assert means[7] > means[2] + 3


def test_a_tau_control_steers_an_expert_whose_default_is_greedy(ctl):
    # the default line-up's experts decode at temperature 0: a control that sets mirostat must leave greedy (else the
    # pick ignores the target and the segment reports no tau); a request without controls stays greedy
    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    greedy = SamplerConfig(temperature=0.0, max_tokens=80, seed=1)
    out = gen.generate("<|tau=5|>Once upon a time", greedy)
    (seg,) = out.stats["segments"]
    assert seg["tau"] == 5.0 and "mirostat" in out.stats["stages"], out.stats
    assert abs(seg["mean_surprise_bits"] - 5) <= 1.0, seg
    plain = gen.generate("Once upon a time", greedy)
    assert plain.stats["segments"][0]["tau"] is None and "mirostat" not in plain.stats["stages"]
    # the same rule for per-call overrides; an explicit temperature is kept
    assert not greedy.steer(mirostat=2, tau=3.0).is_greedy
    assert greedy.steer(mirostat=2, tau=3.0, temperature=0.0).is_greedy


def _cfg_reference(model, prompt_ids, negatives, tokens_needed, scale, forced):
    """Greedy CFG recomputed from scratch at every step (no cache): negative ``negatives[step]`` + tokens so far."""
    tokens: list[int] = []
    with torch.inference_mode():
        for step in range(tokens_needed):
            cond = model(input_ids=torch.tensor([prompt_ids + tokens])).logits[0, -1].float().log_softmax(-1)
            neg = negatives(step) + tokens
            uncond = model(input_ids=torch.tensor([neg])).logits[0, -1].float().log_softmax(-1)
            guided = uncond + scale * (cond - uncond)
            guided[forced["mask"]] = float("-inf")
            tokens.append(forced["token"] if step == forced["step"] else int(guided.argmax()))
    return tokens


def test_generated_control_switches_the_cfg_negative_like_a_two_pass_reference(ctl):
    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    prompt = tok("<|plain|>The sea is")["input_ids"]
    formal = tid(tok, "formal")
    step, n = 3, 9
    force = ForceAt(len(prompt), step, formal)
    out = gen.generate(prompt, SamplerConfig(greedy=True, max_tokens=n), combiner=force)
    assert out.tokens[step] == formal and len(out.tokens) == n
    assert out.stats["rows"] == 2 and out.stats["forwards"] == n  # the re-prefill ran in the same per-step forward
    segs = out.stats["segments"]
    assert [s["control"] for s in segs] == ["plain", "formal"]
    assert (segs[0]["start"], segs[0]["end"], segs[1]["start"], segs[1]["end"]) == (0, step, step + 1, n)
    plain_rubric = gen.encode(VOCAB.all_rubrics["plain"])
    formal_rubric = gen.encode(VOCAB.all_rubrics["formal"])
    # <|plain|> in the prompt: negative = the formal rubric; the generated <|formal|> switches it to the plain one
    ref = _cfg_reference(model, prompt, lambda s: formal_rubric if s <= step else plain_rubric, n, 1.5,
                         {"step": step, "token": formal, "mask": gen.controls.ids})
    assert out.tokens == ref
    assert "<|" not in out.text


def test_control_tokens_never_reach_the_stream(ctl):
    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    prompt = tok("Once upon a time")["input_ids"]
    recall = tid(tok, "recall")
    stream = gen.stream(prompt, SamplerConfig(max_tokens=12, seed=0), combiner=ForceAt(len(prompt), 5, recall))
    text = "".join(stream)
    out = stream.result
    assert recall in out.tokens and text == out.text and "<|" not in text
    assert [s["control"] for s in out.stats["segments"]] == [None, "recall"]
    assert out.stats["segments"][1]["tau"] == 1.5 and "mirostat" in out.stats["stages"]


class ForceAndWatch(ForceAt):
    """ForceAt that also records, at every step, mirostat's target and ``mu`` before the step's token is drawn (it
    runs first in the chain, and stays first when a control rebuilds the chain)."""

    def __init__(self, prompt_len: int, step: int, token: int):
        super().__init__(prompt_len, step, token)
        self.prompt_len, self.req, self.seen = prompt_len, None, []

    def __call__(self, input_ids, scores):
        m = self.req.chain.mirostat
        self.seen.append((input_ids.shape[-1] - self.prompt_len, None if m is None else (m.tau, m.mu)))
        return super().__call__(input_ids, scores)


def _run_batch(batch: DecodeBatch, slots: list, join_at: list[int], steps: int = 40) -> dict:
    """Step ``batch``; slot i joins before step ``join_at[i]``; returns every slot's text as streamed."""
    texts = {id(s): [] for s in slots}
    for step in range(steps):
        batch.join([s for s, at in zip(slots, join_at) if at == step])
        if not batch.slots:
            break
        batch.step(lambda slot, delta: texts[id(slot)].append(str(delta)))
    assert not batch.slots, "the requests did not finish"
    return texts


def test_batch_rubric_switch_equals_the_request_alone_next_to_a_row_without_controls(ctl):
    """A generated control that switches the CFG negative re-prefills that row inside the batch's shared forward:
    greedy, the request gives exactly its solo tokens, and the row without controls beside it gives its own."""
    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    steered, plain = tok("<|plain|>The sea is")["input_ids"], tok("Once upon a time")["input_ids"]
    formal, step, n = tid(tok, "formal"), 3, 9
    config = SamplerConfig(greedy=True, max_tokens=n)
    solo = gen.generate(steered, config, combiner=ForceAt(len(steered), step, formal))
    solo_plain = gen.generate(plain, config)
    runner = BatchRunner(gen, max_rows=8)
    try:
        streams = [runner.submit(plain, config), runner.submit(steered, config,
                                                               combiner=ForceAt(len(steered), step, formal))]
        chunks = [list(s) for s in streams]
    finally:
        runner.close()
    other, out = (s.result for s in streams)
    assert out.tokens == solo.tokens and out.tokens[step] == formal and out.text == solo.text
    assert other.tokens == solo_plain.tokens and other.text == solo_plain.text
    assert out.stats["shared_steps"] > 0 and out.stats["rows"] == 2
    assert out.stats["forwards"] == n  # the negative row's re-prefill rode in a per-step forward
    segs = out.stats["segments"]
    assert [(s["control"], s["start"], s["end"]) for s in segs] == [("plain", 0, step), ("formal", step + 1, n)]
    assert [(s["control"], s["start"], s["end"]) for s in other.stats["segments"]] == [(None, 0, len(other.tokens))]
    assert "".join(chunks[1]) == out.text and not any("<|" in c for c in chunks[0] + chunks[1])


def test_batch_tau_control_moves_the_target_and_resets_mu_per_row(ctl):
    """In the batch, a prompt control sets a row's first segment (mirostat at tau 7, mu 14) and a generated one the
    next (tau 2, mu back at 4 from the next token on); a row without controls that joins later keeps its output."""
    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    steered, plain = tok("<|tau=7|>Once upon a time")["input_ids"], tok("The capital of France is")["input_ids"]
    step, n = 4, 10
    config, greedy = SamplerConfig(max_tokens=n, seed=5), SamplerConfig(max_tokens=8, temperature=0)
    solo_plain = gen.generate(plain, greedy)
    probe = ForceAndWatch(len(steered), step, tid(tok, "tau=2"))
    slots = [new_slot(gen, steered, config, combiner=probe), new_slot(gen, plain, greedy)]
    probe.req = slots[0].req
    texts = _run_batch(DecodeBatch(gen), slots, join_at=[0, 2])
    req = slots[0].req
    seen = dict(probe.seen)
    assert seen[0] == (7.0, 14.0)  # the prompt's control: mirostat's target 7, mu starting at 2 tau
    assert seen[step + 1] == (2.0, 4.0)  # the generated control: target 2, mu reset to 2 tau
    assert all(tau == 2.0 for at, (tau, _) in probe.seen if at > step)
    segs = gen._segments(req)
    assert [(s["control"], s["start"], s["end"], s["tau"]) for s in segs] == [
        ("tau=7", 0, step, 7.0), ("tau=2", step + 1, n, 2.0)]
    assert all(s["mean_surprise_bits"] is not None for s in segs)
    assert slots[1].req.tokens == solo_plain.tokens and slots[1].req.text == solo_plain.text
    assert "".join(texts[id(slots[0])]) == req.text and "<|" not in req.text
