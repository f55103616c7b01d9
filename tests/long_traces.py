"""Long synthetic traces written through the store API: an 8,000-token trace with top-20
alternatives, and a run of 2,000-token traces with 30 layers of per-layer records.

Used by the dashboard benchmark and the tests that need long traces; seeded, so every
store built with the same arguments holds the same numbers.
"""

from __future__ import annotations

import numpy as np

from analysis.store import Store
from analysis.trace import Trace

#: words the synthetic vocabulary is made of: discourse tokens, digits, punctuation, whitespace
WORDS = (["Wait", " wait", " but", " However", " hmm", " so", " the", " answer", " is", " Let",
          " me", " check", ":", ".", ",", " =", " +", "\n", "\n\n", " ", "\t", "<b>", " &", "</think>"]
         + [f" {i}" for i in range(100)] + [f" word{i}" for i in range(200)])


def vocab() -> dict[int, str]:
    return dict(enumerate(WORDS))


def synthetic_trace(n_tokens: int, k: int = 20, seed: int = 0, n_layers: int = 0, n_heads: int = 9,
                    metadata: dict | None = None) -> Trace:
    """A trace of ``n_tokens`` tokens whose top-k logprobs come from a random softmax.

    The chosen token is the top-1 alternative; the full entropy is the top-k entropy plus a
    small tail. With ``n_layers`` it carries logit-lens and attention entropy for every layer
    and per-head attention entropy of the middle layer (nats), as ``record_layers`` stores them.
    """
    rng = np.random.default_rng(seed)
    v = len(WORDS)
    # peaky or flat distributions in stretches, so the entropy curve has structure
    temp = np.repeat(rng.uniform(0.3, 3.0, n_tokens // 50 + 1), 50)[:n_tokens]
    logits = rng.normal(size=(n_tokens, k)) * (3.0 / temp[:, None])
    logits.sort(axis=1)
    logits = logits[:, ::-1]
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True)) + np.log(0.97)
    ids = np.stack([rng.choice(v, size=k, replace=False) for _ in range(n_tokens)])
    p = np.exp(lp)
    entropy = -(p * lp).sum(1) + 0.05
    tokens = [WORDS[i] for i in ids[:, 0]]
    layers = None
    meta = dict(metadata or {})
    if n_layers:
        depth = np.linspace(1.0, 0.2, n_layers)[None, :]
        lens = np.abs(rng.normal(4.0, 1.5, size=(n_tokens, n_layers))) * depth + entropy[:, None] * 0.3
        t1 = np.log(np.arange(n_tokens) + 2.0)[:, None]
        attn = t1 * rng.uniform(0.1, 0.95, size=(n_tokens, n_layers))
        layers = {"lens_entropy": lens, "lens_top1": rng.integers(0, v, size=(n_tokens, n_layers)),
                  "attn_entropy": attn, "attn_entropy_norm": attn / t1,
                  "attn_head_entropy": t1 * rng.uniform(0.05, 1.0, size=(n_tokens, n_heads))}
        meta["layer_info"] = {"n_layers": n_layers, "lens_layers": list(range(1, n_layers + 1)),
                              "attn_layers": list(range(1, n_layers + 1)), "head_layer": n_layers // 2}
    return Trace(prompt="Synthetic problem: what is 12 + 7?", tokens=tokens, logprobs=lp[:, 0],
                 token_ids=ids[:, 0], topk_ids=ids, topk_logprobs=lp, entropy_full=entropy,
                 entropy_full_t1=entropy * 1.02, marker=None, boundary=int(n_tokens * 0.9),
                 metadata=meta, layers=layers)


def long_trace_store(path, n_tokens: int = 8000, k: int = 20, n_traces: int = 1) -> Store:
    """A store with one run of ``n_traces`` ``n_tokens``-token traces with top-``k`` alternatives."""
    store = Store(path)
    run = store.create_run("long trace", "synthetic", model="synthetic")
    store.add_traces(run, [synthetic_trace(n_tokens, k, seed=1 + i, metadata={"problem_id": f"long{i or ''}",
                                                                              "level": 3.0})
                           for i in range(n_traces)], vocab())
    store.finish_run(run)
    return store


def layer_trace_store(path, n_traces: int = 3, n_tokens: int = 2000, n_layers: int = 30) -> Store:
    """A store with one run of ``n_traces`` traces of ``n_tokens`` tokens, each with ``n_layers``
    layers of per-layer records, graded and levelled so every comparison has groups."""
    store = Store(path)
    run = store.create_run("layers", "synthetic", model="synthetic")
    traces = [synthetic_trace(n_tokens, seed=10 + i, n_layers=n_layers,
                              metadata={"problem_id": f"p{i}", "level": float(1 + i % 3), "correct": bool(i % 2)})
              for i in range(n_traces)]
    store.add_traces(run, traces, vocab())
    store.finish_run(run)
    return store
