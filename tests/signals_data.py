"""Small stores for the Signals and Compare pages (synthetic entropies, no model)."""

from __future__ import annotations

import numpy as np

from analysis import compare
from analysis.store import Store
from analysis.trace import Trace
from tests.difficulty_data import graded_traces


def rescored_copy(store: Store, run_id: int, shift: float = 0.3, seed: int = 1) -> int:
    """A second run holding run ``run_id``'s tokens with other entropies, as ``rescore_run`` writes it
    (``rescored_from`` in the run's settings, ``rescored_from_trace`` in each trace's metadata)."""
    rng = np.random.default_rng(seed)
    rid = store.create_run("re-scored <i>B</i>", "rescore", "tiny-b", {"rescored_from": run_id})
    tr = store.traces(run_id)
    out = []
    for row in tr.itertuples():
        tok = store.tokens(int(row.trace_id), with_alternatives=False)
        h = tok["entropy_full"].to_numpy(float)
        h2 = np.clip(h + shift * rng.normal(size=h.size), 0, None)
        out.append(Trace(row.prompt, tok["token"].tolist(), tok["logprob"].to_numpy(float),
                         token_ids=tok["token_id"].to_numpy(), entropy_full=h2, boundary=int(row.boundary),
                         metadata={"problem_id": row.problem_id, "correct": bool(row.correct),
                                   "rescored_from_trace": int(row.trace_id)}))
    store.add_traces(rid, out)
    store.finish_run(rid)
    return rid


def make_checkpoint_store(path, steps=(0, 50, 100, 200)) -> Store:
    """Runs at several checkpoint steps whose entropy falls and accuracy rises along the steps."""
    store = Store(path)
    for i, step in enumerate(steps):
        rid = store.create_run(f"step {step}", "test", "tiny-llama", {"temperature": 0.7})
        ts = graded_traces(seed=10 + i, model_shift=0.6 - 0.2 * i)
        for t in ts:
            t.metadata["correct"] = bool(t.metadata["correct"]) or (i >= 2 and t.metadata["level"] <= 2)
        store.add_traces(rid, ts)
        store.finish_run(rid)
        compare.tag_checkpoint(store, rid, step)
    return store


def make_single_sample_store(path) -> Store:
    """A graded run with one sample per problem (no semantic entropy possible)."""
    store = Store(path)
    rid = store.create_run("one sample each", "test", "tiny-llama", {})
    store.add_traces(rid, graded_traces(seed=4, problems=8, samples=1))
    store.finish_run(rid)
    return store
