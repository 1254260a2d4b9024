"""Weight-only int8 and int4 linear layers (torch's kernels): close to the float model, LoRA still applied per row."""

from __future__ import annotations

import pytest
import torch

from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.experts import ModelPool, Placement, load_model
from asymmetry.experts.config import adapters_package_dir
from asymmetry.experts.quantize import (
    DECODE_ROWS,
    INT4_KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    TiedInt8Head,
    _int4_layout,
    int8_decode_kernel,
    prefill_dtype,
    quantize_model,
)
from asymmetry.sampling import Generator, SamplerConfig, add_control_tokens

PROMPT = "Rome is the capital of Italy, Madrid is the capital of Spain, and the capital of France is"  # > 16 tokens: one kernel


def test_int8_linear_matches_float_linear_for_decode_and_prefill():
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 512)
    q = Int8Linear(dense.weight, dense.bias)
    for rows in (1, DECODE_ROWS + 8):  # the int8 kernel (decode, short prefills) and the dequantised GEMM (prefill)
        x = torch.randn(rows, 256)
        ref, got = dense(x), q(x)
        assert got.dtype == x.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=0.05, rtol=0.05)


def test_int4_linear_matches_its_dequantized_weight_for_decode_and_prefill():
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 192)  # K = 4 groups of 64; N = 3 x 64: full blocks of torch's layout
    q = Int4Linear(dense.weight, dense.bias)
    assert _int4_layout() is not None, "torch's packed int4 layout is not the one we unpack (prefills would be slow)"
    deq = q.dequantized().float()  # (N, K)
    assert (deq - dense.weight).abs().max() < dense.weight.abs().max() / 10  # about half a step (bf16 scale and zero)
    for rows in (1, 5, INT4_KERNEL_ROWS + 72):  # the int4 kernel (decode), and unpack + bf16 GEMM (prefill)
        x = torch.randn(rows, 256)
        ref = x @ deq.t() + dense.bias  # (M, N)
        got = q(x)
        assert got.dtype == x.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=0.03, rtol=0.02)  # bf16 activations


def test_prefill_gemms_run_in_bfloat16_only_where_the_cpu_multiplies_bf16_in_hardware(monkeypatch):
    # an emulated bf16 GEMM was 6.6x slower than float32 on an AVX2-only CPU: prefills of the 1.5B took minutes
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert prefill_dtype() == (torch.bfloat16 if hardware else torch.float32)
    seen = []
    linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w, b=None: seen.append((x.dtype, w.dtype)) or linear(x, w, b))
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 192)
    for layer, rows in ((Int8Linear(dense.weight, dense.bias), DECODE_ROWS + 1),
                        (Int4Linear(dense.weight, dense.bias), INT4_KERNEL_ROWS + 1)):
        seen.clear()
        out = layer(torch.randn(rows, 256))
        assert seen == [(prefill_dtype(), prefill_dtype())] and out.dtype == torch.float32


@pytest.mark.parametrize("kernel", ["weight-only", "dynamic"])
def test_both_int8_decode_kernels_match_the_float_layer_and_keep_rows_independent(monkeypatch, kernel):
    from asymmetry.experts import quantize

    monkeypatch.setattr(quantize, "INT8_DECODE", kernel)
    torch.manual_seed(0)
    dense = torch.nn.Linear(512, 384)
    q = Int8Linear(dense.weight, dense.bias)
    x = torch.randn(6, 512)
    x[3] *= 40  # one row with large activations: with a per-row scale it must not coarsen the others
    with torch.no_grad():
        ref, got = dense(x), q(x)
        alone = torch.cat([q(row) for row in x.split(1)])
    assert got.dtype == torch.float32 and got.shape == (6, 384)
    err = (got - ref).abs().amax(dim=1) / ref.abs().amax(dim=1)  # (6,) relative to each row's largest output
    assert err.max() < 0.03, err
    if kernel == "dynamic":
        assert torch.equal(got, alone)  # each row quantized on its own: a batch's other rows change nothing
        import copy
        import pickle

        for clone in (copy.deepcopy(q), pickle.loads(pickle.dumps(q))):  # the packed C++ weight is remade
            assert torch.equal(clone(x), got)
        with torch.no_grad():
            q.weight[0] = 0  # a changed weight is packed again, not served stale
        assert q(x[:1])[0, 0].item() == pytest.approx(dense.bias[0].item(), abs=1e-6)


def test_the_dynamic_int8_kernel_is_opt_in_and_a_bad_choice_is_refused(monkeypatch):
    from asymmetry.experts import quantize

    monkeypatch.delenv(quantize.INT8_KERNEL_ENV, raising=False)
    assert int8_decode_kernel() == "weight-only"  # the default on every CPU
    monkeypatch.setenv(quantize.INT8_KERNEL_ENV, "dynamic")
    assert int8_decode_kernel() == "dynamic"  # fbgemm ships in x86-64 torch builds
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 128)
    layer, head = Int8Linear(dense.weight, dense.bias), Int8Linear(dense.weight, dense.bias, head=True)
    x = torch.randn(1, 256)
    with torch.no_grad():
        assert head(x).shape == (1, 128)
        assert "_fbgemm" not in head.__dict__  # an output head keeps the weight-only kernel
        layer(x)
    assert "_fbgemm" in layer.__dict__
    monkeypatch.setenv(quantize.INT8_KERNEL_ENV, "int7")
    with pytest.raises(ValueError, match="ASYMMETRY_INT8_KERNEL.*weight-only, dynamic"):
        int8_decode_kernel()


def test_int4_odd_shapes_use_group_32_tail_blocks_or_int8():
    torch.manual_seed(1)
    odd = torch.nn.Linear(96, 80)  # K = 3 x 32: group 32; N = 64 + 16: a partial last block
    q = Int4Linear(odd.weight, None)
    assert q.group == 32
    x = torch.randn(3, 96)
    torch.testing.assert_close(q(x), x @ q.dequantized().float().t(), atol=0.03, rtol=0.02)
    model = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.Linear(80, 40))  # N = 40: not for the int4 kernel
    assert quantize_model(model, "int4") == 2
    assert isinstance(model[0], Int4Linear) and isinstance(model[1], Int8Linear)


@pytest.mark.parametrize("mode, layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantized_smollm2_keeps_its_next_token_and_lora_rows(smollm, mode, layer):
    pool = ModelPool()
    base = pool.base("smollm2", Placement(quantize=mode))
    assert sum(isinstance(m, layer) for m in base.loaded.model.modules()) > 100
    tok = smollm.tokenizer
    ids = tok(PROMPT, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        ref = smollm.model(ids).logits[0, -1]  # (V,)
        got = base.model(ids).logits[0, -1]
    assert got.argmax() == ref.argmax()
    science = base.handle("science", adapters_package_dir() / "science")  # peft wraps the int8 layers
    two = ids.repeat(2, 1)  # (2, T): the adapter on row 0, the bare base on row 1
    with torch.no_grad():
        out = base.model(two, adapter_names=["science", "__base__"]).logits[:, -1]  # (2, V)
        adapted = base.model(ids, **science.forward_kwargs(1)).logits[0, -1]
    torch.testing.assert_close(out[1], got, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out[0], adapted, atol=1e-3, rtol=1e-3)
    assert (out[0] - out[1]).abs().max() > 1e-3  # the adapter changes the logits


def test_auto_keeps_small_bases_in_float_and_bad_modes_are_refused():
    loaded = load_model("smollm2", Placement(quantize="auto"))  # 135M parameters: below the 1B threshold
    assert not any(isinstance(m, Int8Linear) for m in loaded.model.modules())
    with pytest.raises(AsymmetryError, match="quantize"):
        load_model("smollm2", Placement(quantize="int3"))
    with pytest.raises(ValueError, match="int4"):
        quantize_model(torch.nn.Linear(2, 2), "int3")


def test_quantize_flag_before_or_after_the_command_overrides_the_config():
    from asymmetry import cli
    from asymmetry.experts.config import ExpertsConfig

    parser = cli.build_parser()
    assert parser.parse_args(["ask", "q"]).quantize is None  # the config's [experts] quantize
    assert parser.parse_args(["ask", "q", "--quantize", "int4"]).quantize == "int4"
    assert parser.parse_args(["--quantize", "int8", "eval", "mc", "x.csv"]).quantize == "int8"
    assert parser.parse_args(["generate", "p", "--quantize", "none"]).quantize == "none"
    assert ExpertsConfig(quantize="int4").quantize == "int4"
    assert ExpertsConfig().quantize_head and not ExpertsConfig(quantize_head=False).quantize_head
    with pytest.raises(ConfigError, match="quantize_head"):
        ExpertsConfig(quantize_head="no")


def _untied_smollm2():
    """SmolLM2 (float32) with its output head untied: a separate copy of the embedding, as the 1.5B's own head."""
    loaded = load_model("smollm2", Placement(quantize="none"))
    model = loaded.model
    head = torch.nn.Linear(model.config.hidden_size, model.get_input_embeddings().weight.shape[0], bias=False)
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone(), requires_grad=False)
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False
    return loaded


def test_int8_output_head_shrinks_and_keeps_greedy_output_and_logits_within_the_rounding_bound():
    fp_head, q_head = _untied_smollm2(), _untied_smollm2()
    linears = quantize_model(fp_head.model, "int8", head=False)
    assert quantize_model(q_head.model, "int8") == linears + 1
    head, ref_head = q_head.model.get_output_embeddings(), fp_head.model.get_output_embeddings()
    assert type(head) is Int8Linear and type(ref_head) is torch.nn.Linear
    head_bytes = sum(t.numel() * t.element_size() for t in [*head.parameters(), *head.buffers()])
    assert head_bytes < 0.26 * ref_head.weight.numel() * 4  # int8 weight + a bf16 scale per row, against float32

    seen = {}
    ref_head.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    ids = fp_head.tokenizer(PROMPT, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        ref = fp_head.model(ids).logits[0]  # (T, V)
        got = q_head.model(ids).logits[0]
    # Every logit within the worst case of what int8 changes: each weight off by at most half its row's step
    # (sum |x| x scale / 2), the activations rounded to bf16 on the way in (2^-9 of sum |x w|) and the logit rounded
    # to bf16 on the way out (2^-8 of |logit|): a head always runs the weight-only kernel. The rest of the model is
    # the same int8 one on both sides.
    x = seen["x"][0].float()  # (T, K): the final hidden states, the same on both sides
    w = ref_head.weight.float()  # (V, K)
    bound = (x.abs().sum(-1, keepdim=True) * head.scale.float() / 2  # (T, V)
             + x.abs() @ w.abs().t() * 2.0 ** -9 + ref.abs() * 2.0 ** -8 + 1e-3)
    assert ((got - ref).abs() <= bound).all()
    assert torch.equal(got[-1].topk(5).indices, ref[-1].topk(5).indices)

    greedy = SamplerConfig(temperature=0.0, max_tokens=24)
    chat = fp_head.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                                 add_generation_prompt=True, tokenize=True)
    chat = list(chat if isinstance(chat, list) else chat["input_ids"])
    texts = [Generator(b.model, b.tokenizer).generate(chat, greedy).text for b in (fp_head, q_head)]
    assert texts[0] == texts[1] and texts[0]


def test_tied_head_decodes_through_an_int8_copy_that_follows_the_embedding():
    tied = load_model("smollm2", Placement(quantize="int4"))  # SmolLM2's head is its input embedding
    model, tok = tied.model, tied.tokenizer
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert type(head) is TiedInt8Head and head.weight is embed.weight and embed.weight.dtype == torch.float32
    assert head.int8.weight.dtype == torch.int8 and head.int8.head  # the weight-only kernel, bf16-precise logits
    seen = {}
    head.register_forward_pre_hook(lambda _m, args: seen.__setitem__("x", args[0]))
    ids = tok(PROMPT, return_tensors="pt").input_ids  # (1, T), T > 16
    with torch.no_grad():
        model(ids)
        x = seen["x"][0]  # (T, K) final hidden states: the prompt's last row is the one the head gets
        ref = torch.nn.functional.linear(x, embed.weight)  # (T, V) the float head
        got = torch.cat([head(row[None]) for row in x])  # one row a call: the decode path
        # each weight off by at most half its row's step, activations and logits rounded to bf16
        bound = (x.abs().sum(-1, keepdim=True) * head.int8.scale.float() / 2
                 + x.abs() @ embed.weight.abs().t() * 2.0 ** -9 + ref.abs() * 2.0 ** -8 + 1e-3)
        assert ((got - ref).abs() <= bound).all() and not torch.equal(got, ref)
        assert torch.equal(got[-1].topk(5).indices, ref[-1].topk(5).indices)
        long = x.repeat(DECODE_ROWS // x.shape[0] + 1, 1)  # more rows than DECODE_ROWS: the float weight itself
        assert torch.equal(head(long), torch.nn.functional.linear(long, embed.weight))

        token = int(ref[-1].argmin())  # a change to the embedding reaches the int8 copy at the next call
        embed.weight[token] = embed.weight[int(ref[-1].argmax())] * 2
        assert int(head(x[-1:]).argmax()) == token

        rows = embed.weight.shape[0]  # control tokens resize the embedding; the head stays tied and int8
        int8_rows = head.int8.weight.clone()
        assert add_control_tokens(model, tok, ["<|ctl_a|>", "<|ctl_b|>"]) == 2
        resized = model.get_output_embeddings()
        assert type(resized) is TiedInt8Head and resized.weight is model.get_input_embeddings().weight
        assert resized.out_features == len(tok) > rows and torch.equal(resized.int8.weight[:rows], int8_rows)
        logits = model(ids).logits[0, -1]  # (V + 2,)
        assert torch.equal(logits[rows:], torch.zeros(2))


def test_a_quantized_head_resizes_for_control_tokens():
    loaded = _untied_smollm2()
    quantize_model(loaded.model, "int4")
    head = loaded.model.get_output_embeddings()
    assert type(head) is Int8Linear  # int8 in the int4 mode too
    again = Int8Linear(head.as_linear().weight, None)  # the float round trip a resize takes: the same int8 head
    assert torch.equal(again.weight, head.weight) and torch.equal(again.scale, head.scale)
    rows = head.out_features
    assert add_control_tokens(loaded.model, loaded.tokenizer, ["<|ctl_a|>", "<|ctl_b|>"]) == 2
    resized = loaded.model.get_output_embeddings()
    assert type(resized) is Int8Linear and resized.out_features == len(loaded.tokenizer) > rows
    assert torch.equal(resized.weight[:rows], head.weight) and torch.equal(resized.scale[:rows], head.scale)
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = loaded.model(ids).logits[0, -1]  # (V + 2,)
    assert logits.shape[0] == resized.out_features and torch.equal(logits[rows:], torch.zeros(2))
