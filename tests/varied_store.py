"""A store whose runs differ in every way a page has to cope with (synthetic numbers, no model).

Runs, in order: two graded runs of different sizes; an ungraded run; a run with per-layer
records; a top-k-only upload (alternatives as text, no token ids, no full entropy); a run
with one trace; an empty run; a run holding one 8,000-token trace. Names carry HTML, since
names come from users.
"""

from __future__ import annotations

import numpy as np

from analysis.store import Store
from analysis.trace import Trace
from tests.difficulty_data import graded_traces
from tests.long_traces import synthetic_trace, vocab


def topk_only_traces(n: int = 3, tokens: int = 40, k: int = 5, seed: int = 0) -> list[Trace]:
    """Traces as an API dump gives them: chosen logprob and top-k alternatives as text."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        logits = np.sort(rng.normal(size=(tokens, k)) * 2.0, axis=1)[:, ::-1]
        lp = logits - np.log(np.exp(logits).sum(1, keepdims=True)) + np.log(0.9)
        words = [f" u{j % 17}" for j in range(tokens)]
        alts = [[w] + [f" alt{a}" for a in range(1, k)] for w in words]
        out.append(Trace(f"Uploaded prompt {i} <script>x</script>", words, lp[:, 0], topk_tokens=alts,
                         topk_logprobs=lp, marker=None,
                         metadata={"problem_id": f"up{i}", "level": float(1 + i % 2)}))
    return out


def ungraded(traces: list[Trace]) -> list[Trace]:
    """The same traces with every grade removed (no gold answer, no verdict)."""
    for t in traces:
        for key in ("correct", "gold_answer", "pred_answer"):
            t.metadata.pop(key, None)
    return traces


def varied_store(path, long_tokens: int = 8000) -> Store:
    store = Store(path)
    v = vocab()

    def run(name: str, traces: list[Trace], source: str = "test", model: str | None = "tiny-llama",
            vocab_map: dict | None = None, status: str = "complete") -> int:
        rid = store.create_run(name, source, model, {"temperature": 0.7})
        if traces:
            store.add_traces(rid, traces, vocab_map)
        store.finish_run(rid, status)
        return rid

    run("graded <b>big</b>", graded_traces(seed=0))
    run("graded small", graded_traces(seed=1, levels=(1, 2, 3), problems=2, samples=2, model_shift=0.3))
    run("ungraded", ungraded(graded_traces(seed=2, levels=(1, 2), problems=2, samples=2)))
    run("with layers", [synthetic_trace(60, k=5, seed=20 + i, n_layers=4,
                                        metadata={"problem_id": f"p{i}", "level": float(1 + i % 2),
                                                  "correct": bool(i % 2)})
                        for i in range(4)], model="synthetic", vocab_map=v)
    run("top-k upload", topk_only_traces(), source="upload", model=None)
    run("one trace", [synthetic_trace(30, k=5, seed=3, metadata={"problem_id": "solo", "level": 2.0,
                                                                 "correct": True})],
        model="synthetic", vocab_map=v)
    run("empty", [], status="interrupted")
    run("long trace", [synthetic_trace(long_tokens, seed=1, metadata={"problem_id": "long", "level": 3.0})],
        source="synthetic", model="synthetic", vocab_map=v)
    return store
