"""Training an expert that emits control tokens (issue 17, part 4): ``train_adapter(control_tokens=...)`` trains the
control tokens' embedding rows beside the LoRA weights and leaves every ordinary row as it was; the saved adapter
keeps the rows apart (experts/controls.py) and its card records the vocabulary. A few steps on SmolLM2, the small
default base, on real annotated SciQ/SQuAD answers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from asymmetry.engine import CITE_INSTRUCTION
from asymmetry.experts.annotate import grounded_examples
from asymmetry.experts.base import load_model
from asymmetry.experts.controls import CONTROL_ROWS, adapter_controls
from asymmetry.experts.training import AdapterTrainSettings, train_adapter
from asymmetry.sampling.controls import ControlsConfig, add_control_tokens

TOKENS = {c.name: c.token for c in ControlsConfig().controls}


@pytest.mark.slow  # about 40 s on a quiet 2-core machine (165 s on the loaded one): two SmolLM2 loads and 2 steps
def test_a_few_steps_train_the_control_rows_and_no_ordinary_embedding_row(tmp_path):
    examples = grounded_examples(TOKENS, instruction=CITE_INSTRUCTION, sciq=3, squad=3, max_words=40)
    settings = AdapterTrainSettings(max_steps=2, batch_size=2, max_length=160, eval_size=2, top_layers=1, lr=1e-2,
                                    warmup_steps=1)
    result = train_adapter("ctl", examples, tmp_path / "ctl", base="smollm2", settings=settings, progress=False,
                           control_tokens=TOKENS, add_tokens=add_control_tokens)

    fresh = load_model("smollm2")
    words = len(fresh.tokenizer)
    add_control_tokens(fresh.model, fresh.tokenizer, list(TOKENS.values()))
    ids = [fresh.tokenizer.convert_tokens_to_ids(t) for t in TOKENS.values()]
    assert ids == list(range(words, words + len(TOKENS))) and result.card["controls"] == {"tokens": TOKENS,
                                                                                       "ids": ids}
    before = fresh.model.get_input_embeddings().weight.detach()  # (V, D): SmolLM2's rows, zero control rows
    with torch.no_grad():
        after = result.model.get_input_embeddings()(torch.arange(before.shape[0]))  # (V, D) as the trained model sees
    torch.testing.assert_close(after[:words], before[:words], rtol=0, atol=0)  # every ordinary row unchanged
    changed = (after[words:] - before[words:]).abs().amax(dim=1)  # (C,)
    assert changed[list(TOKENS).index("recall")] > 0 and changed[list(TOKENS).index("explain")] > 0

    folder = tmp_path / "ctl"
    rows = load_file(folder / CONTROL_ROWS)
    assert set(rows) == {"input"}  # SmolLM2's head is tied to its embedding: one set of rows serves both
    torch.testing.assert_close(rows["input"], after[words:], rtol=0, atol=0)
    assert json.loads((folder / "adapter_config.json").read_text())["trainable_token_indices"] is None
    assert not any("trainable_tokens" in k for k in load_file(folder / "adapter_model.safetensors"))
    assert adapter_controls(folder) == result.card["controls"]
    assert "control tokens" in (folder / "README.md").read_text()
