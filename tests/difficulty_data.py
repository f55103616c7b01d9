"""A small graded store for the difficulty and early-stop tests (synthetic entropies, no model)."""

from __future__ import annotations

import numpy as np

from analysis.store import Store
from analysis.trace import Trace


def graded_traces(seed: int = 0, levels=(1, 2, 3, 4), problems: int = 4, samples: int = 3,
                  model_shift: float = 0.0) -> list[Trace]:
    """Traces whose entropy is U-shaped over level, with answers written into the text.

    Correct traces calm down (low entropy) after they write the answer; wrong ones stay high.
    """
    rng = np.random.default_rng(seed)
    base = {1: 1.6, 2: 1.0, 3: 1.1, 4: 1.7}
    out = []
    for lv in levels:
        for p in range(problems):
            gold = str(10 * lv + p)
            for s in range(samples):
                ok = rng.random() < (0.9 - 0.2 * (lv - 1))
                n_think = int(rng.integers(30, 60))
                said = gold if ok else str(int(gold) + 1)
                words = [f" w{i}" for i in range(n_think)] + [" so", " it", " is", f" {said}", "."]
                words += [" Final", " answer", ":", f" {said}"]
                n = len(words)
                h = base.get(lv, 1.2) + model_shift + 0.3 * rng.random(n)
                if ok:
                    h[n_think:] = 0.05 + 0.05 * rng.random(n - n_think)
                out.append(Trace("What is it?", words, np.zeros(n), token_ids=np.arange(n) % 50,
                                 entropy_full=h, marker="Final answer:",
                                 metadata={"problem_id": f"L{lv}-{p}", "level": float(lv), "gold_answer": gold,
                                           "sample_idx": s, "correct": ok, "pred_answer": said,
                                           "question": "What is it?"}))
    return out


def make_graded_store(path, runs: int = 2) -> Store:
    """A store with ``runs`` graded runs (different entropy levels, as two temperatures would give)."""
    store = Store(path)
    for r in range(runs):
        rid = store.create_run(f"graded run {r} <b>x</b>", "test", "tiny-llama", {"temperature": 0.7})
        store.add_traces(rid, graded_traces(seed=r, model_shift=0.2 * r))
        store.finish_run(rid)
    return store
