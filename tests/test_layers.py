"""Logit lens and attention entropy (analysis.layers): checks against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import layers as L
from analysis.layers import LayerOptions, LayerRecordingError

VOCAB = 96


def _tiny(arch: str):
    """Tiny seeded random causal LMs of several architectures (each under 100k parameters)."""
    from transformers import (Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel,
                              LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(1)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4)
    if arch == "llama":      # grouped-query attention: 4 query heads over 2 key/value heads
        model = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2))
    elif arch == "qwen2":    # biases on q/k/v, one key/value head
        model = Qwen2ForCausalLM(Qwen2Config(**common, num_key_value_heads=1))
    elif arch == "gpt2":     # ln_f / lm_head, learned positions, fused c_attn
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4,
                                           n_positions=64, bos_token_id=0, eos_token_id=0))
    elif arch == "gemma2":   # final logit soft-cap, attention soft-cap, sliding window
        model = Gemma2ForCausalLM(Gemma2Config(**common, num_key_value_heads=2, head_dim=8,
                                               final_logit_softcapping=3.0, attn_logit_softcapping=5.0,
                                               sliding_window=4))
    else:
        raise ValueError(arch)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 100_000, f"tiny {arch} has {n_params} parameters: the config is not tiny"
    return model


ARCHS = ["llama", "qwen2", "gpt2", "gemma2"]
PROMPT = [3, 17, 5, 40, 8, 22, 9]
COMPLETION = [11, 60, 2, 33, 33, 71, 4, 90, 15, 7, 28, 50, 1]


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, _tiny(request.param)


def test_parts_are_found_generically(arch_model):
    arch, model = arch_model
    parts = L.find_lens_parts(model)
    assert parts.n_layers == 3
    assert parts.norm is not None and parts.names["norm"].endswith(("norm", "ln_f"))
    assert parts.weight.shape[0] == VOCAB
    assert parts.softcap == (3.0 if arch == "gemma2" else None)


def test_lens_matches_full_materialisation(arch_model):
    """Chunked lens (hooks, a few rows at a time) == all [layers x T x vocab] logits at once."""
    _, model = arch_model
    rec = L.record_layers(model, PROMPT, COMPLETION, LayerOptions(logit_lens=True), lens_chunk=5)
    ref = L.naive_layers(model, PROMPT, COMPLETION)
    assert rec.arrays["lens_entropy"].shape == (len(COMPLETION), 3)
    np.testing.assert_allclose(rec.arrays["lens_entropy"], ref["lens_entropy"], atol=1e-5)
    np.testing.assert_array_equal(rec.arrays["lens_top1"], ref["lens_top1"])
    assert rec.info["lens_layers"] == [1, 2, 3]


@pytest.mark.parametrize("query_chunk", [3, None])  # chunks of queries; the fused kernel (None)
def test_attention_entropy_matches_output_attentions(arch_model, query_chunk):
    """Attention entropy (chunked or fused) == entropy of eager attention's output_attentions maps."""
    arch, model = arch_model
    rec = L.record_layers(model, PROMPT, COMPLETION, LayerOptions(attention_entropy=True, head_layer=2),
                          query_chunk=query_chunk)
    ref = L.naive_layers(model, PROMPT, COMPLETION)
    np.testing.assert_allclose(rec.arrays["attn_entropy"], ref["attn_entropy"], atol=1e-5)
    rows = np.arange(len(COMPLETION)) + len(PROMPT) - 1
    np.testing.assert_allclose(rec.arrays["attn_head_entropy"], ref["attn_heads"][1][:, rows].T, atol=1e-5)
    norm = rec.arrays["attn_entropy_norm"]
    if arch != "gemma2":  # plain causal: normalised by ln(t+1)
        np.testing.assert_allclose(norm, ref["attn_entropy_norm"], atol=1e-5)
    else:  # sliding window of 4: normalised by ln(visible keys) = ln(min(t+1, 4)) on every layer
        vis = np.minimum(rows + 1, 4)
        window_layers = [i for i, t in enumerate(model.config.layer_types) if t == "sliding_attention"]
        np.testing.assert_allclose(norm[:, window_layers],
                                   rec.arrays["attn_entropy"][:, window_layers] / np.log(vis)[:, None], atol=1e-5)
    finite = norm[np.isfinite(norm)]
    assert finite.size and finite.min() >= 0 and finite.max() <= 1 + 1e-6
    assert rec.info["head_layer"] == 2 and rec.info["attn_layers"] == [1, 2, 3]
    assert model.config._attn_implementation != L.ATTENTION_NAME  # restored afterwards


def test_lens_every_keeps_last_layer():
    assert L.lens_layers(30, 4) == [4, 8, 12, 16, 20, 24, 28, 30]
    assert L.lens_layers(3, 1) == [1, 2, 3]
    assert L.lens_layers(3, 10) == [3]
    model = _tiny("llama")
    rec = L.record_layers(model, PROMPT, COMPLETION, LayerOptions(logit_lens=True, lens_every=2))
    ref = L.naive_layers(model, PROMPT, COMPLETION, kept=[2, 3])
    assert rec.info["lens_layers"] == [2, 3]
    np.testing.assert_allclose(rec.arrays["lens_entropy"], ref["lens_entropy"], atol=1e-5)


class _Head(torch.nn.Module):
    """Stands in for an attention module: what the attention function reads from it."""

    def __init__(self, layer_idx: int = 0, groups: int = 1):
        super().__init__()
        self.layer_idx, self.is_causal, self.num_key_value_groups = layer_idx, True, groups


@pytest.mark.parametrize("chunk,cached", [(1, 0), (3, 0), (64, 0), (2, 5), (None, 0), (None, 5)])
def test_uniform_attention_gives_ln_t_plus_1(chunk, cached):
    """Zero queries make every visible key equally likely: entropy ln(t+1), normalised 1."""
    tq, tk, heads = 9, 9 + cached, 4
    q = torch.zeros(1, heads, tq, 8)
    k = torch.randn(1, 2, tk, 8)
    v = torch.randn(1, 2, tk, 8)
    rec = L.AttentionRecorder(head_layer=0, query_chunk=chunk)
    token = L._RECORDER.set(rec)
    try:
        out, weights = L.entropy_attention_forward(_Head(groups=2), q, k, v, None, scaling=0.3)
    finally:
        L._RECORDER.reset(token)
    assert weights is None and out.shape == (1, tq, heads, 8)
    t = np.arange(cached, tk)  # absolute positions of the queries
    np.testing.assert_allclose(rec.mean[0][0].numpy(), L.uniform_attention_entropy(t), rtol=1e-5)
    np.testing.assert_allclose(rec.heads[0].numpy(), np.broadcast_to(np.log(t + 1.0), (heads, tq)), rtol=1e-5)
    norm = rec.normalised(0)[0].numpy()
    np.testing.assert_allclose(norm[t > 0], 1.0, rtol=1e-5)
    assert np.isnan(norm[t == 0]).all()  # one visible key: 0/0
    # the output is the running mean of the values (uniform weights), per key/value group
    csum = v[0].cumsum(1) / torch.arange(1, tk + 1)[None, :, None]
    np.testing.assert_allclose(out[0, :, 0].numpy(), csum[0, cached:].numpy(), atol=1e-5)
    np.testing.assert_allclose(out[0, :, 3].numpy(), csum[1, cached:].numpy(), atol=1e-5)


@pytest.mark.parametrize("query_chunk", [4, None])
def test_left_padded_batch_matches_eager(query_chunk):
    """Padding masks: outputs equal eager attention's; entropies equal eager maps' on real rows."""
    model = _tiny("llama")
    ids = torch.tensor([[0, 0, 0, 5, 9, 14, 3, 7, 21, 8], [4, 12, 6, 5, 9, 14, 3, 7, 21, 8]])
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.inference_mode():
        before = model.config._attn_implementation
        model.set_attn_implementation("eager")
        ref = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        model.set_attn_implementation(before)
        rec = L.AttentionRecorder(head_layer=1, query_chunk=query_chunk)
        with L.recording_attention(model, rec):
            got = model(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    np.testing.assert_allclose(got.logits[real].numpy(), ref.logits[real].numpy(), atol=1e-5)
    for layer, att in enumerate(ref.attentions):
        p = att.double()
        h = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros(()))).sum(-1)  # [B, H, T]
        np.testing.assert_allclose(rec.mean[layer][real].numpy(), h.mean(1)[real].numpy(), atol=1e-5)
        n_vis = (mask[:, None, :].bool() & torch.ones(10, 10).tril().bool()[None]).sum(-1)
        np.testing.assert_array_equal(rec.visible[layer][real].numpy(), n_vis[real].numpy())
    assert torch.isnan(rec.mean[0][~real]).all()  # padding queries see nothing


def _attention_reference(q, k, v, allowed, scale):
    """Float64 materialised attention: output [B, H, Tq, Dv] and entropies [B, H, Tq] (nats)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = ((q.double() @ k.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf"))
    p = s.softmax(-1)
    h = -(torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros(()))).sum(-1)
    return p @ v, h


@pytest.mark.parametrize("tq,tk,masked", [(7, 7, False), (4, 9, False), (1, 6, False), (5, 8, True)])
def test_fused_and_chunked_attention_agree_with_float64(tq, tk, masked):
    """Both attention paths against float64 materialisation: grouped-query heads, a value head
    size other than the query's, a cache prefix (Tq < Tk), one decoding query, and a boolean mask
    that hides keys the causal cut would show."""
    torch.manual_seed(3)
    b, h, hkv, d, dv = 2, 6, 2, 8, 12
    q, k, v = torch.randn(b, h, tq, d) * 2, torch.randn(b, hkv, tk, d), torch.randn(b, hkv, tk, dv)
    q_pos = torch.arange(tk - tq, tk)
    allowed = (torch.arange(tk)[None, :] <= q_pos[:, None]).expand(b, 1, tq, tk).clone()
    mask = None
    if masked:
        allowed[0, 0, :, :2] = False        # batch row 0: the first two keys hidden (left padding)
        allowed[1, 0, :, 5] = False         # batch row 1: one key in the middle
        mask = allowed
    want_out, want_h = _attention_reference(q, k, v, allowed, 0.4)
    for chunk in (None, 2):
        rec = L.AttentionRecorder(head_layer=0, query_chunk=chunk)
        token = L._RECORDER.set(rec)
        try:
            out, _ = L.entropy_attention_forward(_Head(groups=3), q, k, v, mask, scaling=0.4)
        finally:
            L._RECORDER.reset(token)
        assert out.shape == (b, tq, h, dv)
        np.testing.assert_allclose(out.transpose(1, 2).numpy(), want_out.numpy(), atol=1e-5)
        np.testing.assert_allclose(rec.heads.numpy(), want_h.numpy(), atol=1e-5)
        np.testing.assert_allclose(rec.mean[0].numpy(), want_h.mean(1).numpy(), atol=1e-5)
        np.testing.assert_array_equal(rec.visible[0].numpy(), allowed[:, 0].sum(-1).numpy())


def test_lens_blocks_agree_with_float64_and_ties_go_to_the_first():
    """The lens reduced over several vocabulary blocks (with bias, scale and soft-cap) equals
    float64 on the full logits. Integer weights and inputs make the logits exact, so tied maxima
    are real ties: within a block, across blocks, and in a narrower last block; the top-1 is the
    first of them, as argmax gives it."""
    torch.manual_seed(4)
    sub = 1024                                   # the blocks below are 1 or 2 of these wide
    vocab, hidden = 2 * sub + 300, 16
    weight = torch.randint(-2, 3, (vocab, hidden)).float()
    signs = torch.ones(3, hidden)
    signs[1, 1::2] = -1
    signs[2, hidden // 2:] = -1
    ties = [[sub + 7, sub + 700, 2 * sub + 20],  # same slice, then the next block: first sub + 7
            [sub - 1, sub + 3],                  # two slices of one block
            [2 * sub + 40, 2 * sub + 41]]        # the narrow last block (index-tracking max)
    bias = torch.randint(-1, 2, (vocab,)).float()
    for group, ids in enumerate(ties):
        weight[ids] = 3 * signs[group]           # logit >= 18*16 - 48 > any other's 2*16*6 + 32
        bias[ids] = 1.0
    noise = torch.randint(-1, 2, (9, hidden)).float()
    h = torch.cat([6 * signs.repeat_interleave(3, 0) + noise, torch.randint(-3, 4, (4, hidden)).float()])
    parts = L.LensParts(blocks=torch.nn.ModuleList(), norm=None, weight=weight, bias=bias,
                        scale=0.05, softcap=20.0)
    z = (h.double() @ weight.double().T + bias.double()) * 0.05
    z = torch.tanh(z / 20.0) * 20.0
    want_h = -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)
    for chunk, block in [(3, 2 * sub), (5, sub), (None, None)]:
        ent, top = L.lens_entropy_rows(h, parts, chunk, block)
        np.testing.assert_allclose(ent.numpy(), want_h.numpy(), atol=1e-5)
        np.testing.assert_array_equal(top.numpy(), z.argmax(-1).numpy())
        assert top[:9].tolist() == [ids[0] for ids in ties for _ in range(3)]


def test_wrong_head_is_caught():
    """A soft-cap the model does not have makes the last-layer check fail loudly."""
    model = _tiny("llama")
    parts = L.find_lens_parts(model)
    parts.softcap = 0.5
    with pytest.raises(LayerRecordingError, match="differs from the model's logits"):
        L.record_layers(model, PROMPT, COMPLETION, LayerOptions(logit_lens=True), parts=parts)
    with pytest.raises(LayerRecordingError, match="outside"):
        L.record_layers(model, PROMPT, COMPLETION, LayerOptions(attention_entropy=True, head_layer=9))


def test_score_and_generate_attach_layers(tiny_lm, store):
    """Scoring and generation record the arrays; the last lens layer equals token entropy at T=1;
    the store gives back exactly what was recorded."""
    from analysis.record import GenerationSettings, Prompt, generate_batch, score_completion, vocab_for

    settings = GenerationSettings(max_new_tokens=12, seed=3, logit_lens=True, attention_entropy=True,
                                  head_layer=1, top_k=5)
    scored = score_completion(tiny_lm, "What is 12 + 7?", " 12 + 7 = 19. Final answer: 19", settings)
    n = scored.n_tokens
    assert scored.layers["lens_entropy"].shape == (n, 2) and scored.layers["attn_entropy"].shape == (n, 2)
    assert scored.layers["attn_head_entropy"].shape == (n, 4)
    np.testing.assert_allclose(scored.layers["lens_entropy"][:, -1], scored.entropy_full_t1, atol=1e-4)
    assert scored.metadata["layer_info"]["lens_layers"] == [1, 2]

    traces = generate_batch(tiny_lm, [Prompt("Tom has 3 apples"), Prompt("Hmm, maybe")], settings, seed=3)
    for tr in traces:
        np.testing.assert_allclose(tr.layers["lens_entropy"][:, -1], tr.entropy_full_t1, atol=1e-4)
    run = store.create_run("layers", "generate", "tiny", settings.to_dict())
    ids = store.add_traces(run, traces + [scored], vocab_for(tiny_lm, traces + [scored]))
    for tid, tr in zip(ids, traces + [scored]):
        df = store.token_layers(tid)
        assert len(df) == tr.n_tokens
        for name, arr in tr.layers.items():
            got = np.array(df[name].tolist(), dtype=arr.dtype)
            np.testing.assert_array_equal(got, arr.astype(got.dtype))
        want = [[tiny_lm.tokenizer.decode([int(i)]) for i in row] for row in tr.layers["lens_top1"]]
        assert df["lens_top1_text"].tolist() == want
        assert store.layer_info(tid)["head_layer"] == 1
    prof = store.layer_profiles(run, "lens_entropy")
    assert set(prof["trace_id"]) == set(ids) and set(prof["k"]) == {0, 1}
    first = prof[prof.trace_id == ids[0]].sort_values("k")["mean"].to_numpy()
    np.testing.assert_allclose(first, traces[0].layers["lens_entropy"].mean(0), rtol=1e-5)
    assert store.layer_runs()["run_id"].tolist() == [run]
    assert store.token_layers(10_000).empty


def test_no_layer_records_by_default(tiny_lm):
    from analysis.record import GenerationSettings, score_completion

    tr = score_completion(tiny_lm, "Hi", " there", GenerationSettings())
    assert tr.layers is None and "layer_info" not in tr.metadata


def test_embedded_last_layer_equals_token_entropy(embedded_lm):
    """On SmolLM2-135M: lens of layer 30 == the recorded token entropy at T=1 (short input)."""
    from analysis.record import GenerationSettings, score_completion

    settings = GenerationSettings(top_k=0, logit_lens=True, lens_every=10, attention_entropy=True)
    tr = score_completion(embedded_lm, "What is 2 + 3?", "2 + 3 = 5. Final answer: 5", settings)
    assert tr.metadata["layer_info"]["lens_layers"] == [10, 20, 30]
    # the recorder's pass runs over a KV cache in chunks, ours in one pass: float32 kernels of
    # different shapes differ by ~1e-5 in logits, which is ~1e-4 in entropy after 30 layers
    np.testing.assert_allclose(tr.layers["lens_entropy"][:, -1], tr.entropy_full_t1, atol=1e-3)
    # against the model's own logits of one full pass (entropy in float64) it is closer
    from analysis.record import build_prompt_ids
    prompt_ids = build_prompt_ids(embedded_lm, "What is 2 + 3?", settings)
    ids = torch.tensor([prompt_ids + tr.token_ids.tolist()])
    with torch.inference_mode():
        logits = embedded_lm.model(input_ids=ids).logits[0, len(prompt_ids) - 1: -1].double()
        h = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).numpy()
    np.testing.assert_allclose(tr.layers["lens_entropy"][:, -1], h, atol=1e-4)
    assert tr.layers["attn_head_entropy"].shape == (tr.n_tokens, 9)
    t = np.arange(tr.n_tokens) + len(prompt_ids) - 1
    assert (tr.layers["attn_entropy"] <= np.log(t + 1.0)[:, None] + 1e-4).all()
    norm = tr.layers["attn_entropy_norm"]
    assert np.nanmin(norm) >= 0 and np.nanmax(norm) <= 1 + 1e-5


def test_split_anchors_explorers():
    a = np.array([0.1, 0.5, np.nan, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 1.0])
    g = L.split_anchors_explorers(a, 20)
    assert g[2] == "none"
    assert set(np.flatnonzero(g == "anchor")) == {0, 6}       # 0.1, 0.2: at or below the 20th percentile
    assert set(np.flatnonzero(g == "explorer")) == {3, 10}    # 0.9, 1.0: at or above the 80th
    assert (g == "middle").sum() == 6
    assert (L.split_anchors_explorers(np.full(3, np.nan)) == "none").all()
    with pytest.raises(ValueError):
        L.split_anchors_explorers(a, 60)


def test_difficulty_bins_and_profile_groups():
    import pandas as pd

    by_level = pd.DataFrame({"trace_id": [1, 2], "level": [1.0, np.nan]})
    assert L.difficulty_bins(by_level).tolist() == ["level 1", "unknown"]
    by_rate = pd.DataFrame({"trace_id": [1, 2, 3, 4, 5, 6], "level": [np.nan] * 6,
                            "problem_id": ["a", "a", "a", "b", "b", "c"],
                            "correct": [True, True, False, False, True, False]})
    assert L.difficulty_bins(by_rate).tolist() == ["easy", "easy", "easy", "medium", "medium", "hard"]
    prof = pd.DataFrame({"trace_id": [1, 1, 2, 2, 3, 3], "k": [0, 1] * 3, "mean": [1.0, 2.0, 3.0, 4.0, 5.0, np.nan]})
    out = L.profile_groups(prof, pd.Series({1: "x", 2: "x", 3: "y"}), [4, 8])
    x = out[out.group == "x"].set_index("layer")
    assert x.loc[4, "mean"] == 2.0 and x.loc[8, "mean"] == 3.0 and x.loc[4, "n"] == 2
    assert np.isclose(x.loc[4, "hi"] - x.loc[4, "mean"], 1.96 * np.sqrt(2) / np.sqrt(2))
    y = out[out.group == "y"]
    assert y["layer"].tolist() == [4] and np.isnan(y["lo"].iloc[0])  # one trace: no interval


def test_analysis_layers_does_not_import_streamlit():
    import subprocess
    import sys

    code = "import analysis.layers, analysis.record, sys; print('streamlit' in sys.modules)"
    from tests.browser import ROOT

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT))
    assert out.stdout.strip() == "False", out.stderr


def test_layers_travel_in_parquet_exports(tiny_lm, store, tmp_path):
    """Export -> import keeps every per-layer array and the lens top-1 tokens' text."""
    import numpy as np
    from analysis.formats.ingest import import_export
    from analysis.formats.thinkscope import export_run
    from analysis.record import GenerationSettings, Prompt, record_run

    s = GenerationSettings(max_new_tokens=8, samples=1, logit_lens=True, attention_entropy=True)
    first = record_run(store, tiny_lm, [Prompt("What is 2 + 3?")], s, "layers").run_id
    second = import_export(store, export_run(store, first, tmp_path / "layers.parquet"))
    a = store.token_layers(int(store.traces(first).trace_id.iloc[0]))
    b = store.token_layers(int(store.traces(second).trace_id.iloc[0]))
    assert len(a) == len(b) == 8
    for col in ("lens_entropy", "lens_top1", "attn_entropy", "attn_entropy_norm", "attn_head_entropy"):
        np.testing.assert_array_equal(np.stack(a[col]), np.stack(b[col]))
    assert a["lens_top1_text"].tolist() == b["lens_top1_text"].tolist()
