"""Forking points of a stored trace, as a table with their context (the explorer's table and
``thinkscope forks RUN TRACE``).

A forking point is a position whose window entropy (mean entropy of the next ``w`` tokens,
ARES arXiv 2510.08457) is at or above a threshold tau: the trace's own percentile (ARES: 95),
the top p % of the run's window entropies (Beyond the 80/20 rule, arXiv 2506.01939: 20) or a
fixed value in nats; optionally only at tokens of a lexicon of discourse words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics
from .errors import ForkError

METHODS = ("percentile", "corpus", "fixed")
#: characters of text shown before and after a forking token
CONTEXT_BEFORE, CONTEXT_AFTER = 40, 60


@dataclass(frozen=True)
class ForkSettings:
    """How forking points are found. ``value``: the percentile, the top % of the run's tokens,
    or tau in nats (method 'fixed'). ``lexicon`` None: every token may fork."""

    estimator: str = "best"
    w: int = 4
    method: str = "percentile"
    value: float = 95.0
    lexicon: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ForkError(f"unknown threshold method {self.method!r}; use {', '.join(METHODS)}")
        if self.w < 1:
            raise ForkError(f"window w must be at least 1 token, got {self.w}")
        if self.method == "percentile" and not 0 <= self.value <= 100:
            raise ForkError(f"a percentile is between 0 and 100, got {self.value:g}")
        if self.method == "corpus" and not 0 < self.value <= 100:
            raise ForkError(f"the run's top % is above 0 and at most 100, got {self.value:g}")


@dataclass
class Forks:
    """Forking points of one trace: ``table`` (position, token, window entropy and token
    entropy in nats, context), the threshold ``tau`` (nats), and how many positions reach tau
    before the lexicon restriction (``reaching``)."""

    table: pd.DataFrame
    tau: float
    reaching: int
    n_tokens: int
    estimator: str


def context(text: str, offsets: np.ndarray, positions: np.ndarray) -> list[str]:
    """Each position's token between ⟦ ⟧ with the text around it, newlines as spaces.
    ``offsets[i]`` is the character offset of token i in ``text`` (len(tokens) + 1 entries)."""
    a, b = offsets[positions], offsets[positions + 1]
    return [(text[max(0, i - CONTEXT_BEFORE):i] + "⟦" + text[i:j] + "⟧" + text[j:j + CONTEXT_AFTER]).replace("\n", " ")
            for i, j in zip(a.tolist(), b.tolist())]


def find_forks(tokens: Sequence[str], h: np.ndarray, settings: ForkSettings,
               corpus: np.ndarray | None = None) -> Forks:
    """Forking points of one trace from its tokens and token entropies ``h`` (nats).
    ``corpus``: the run's window entropies, needed by the method 'corpus'."""
    h = np.asarray(h, np.float64)
    win = metrics.window_entropy(h, settings.w).values
    tau = metrics.forking_threshold(win, settings.method, settings.value, corpus=corpus)
    lexicon = list(settings.lexicon) if settings.lexicon is not None else None
    forks = metrics.forking_points(win, tau, tokens, lexicon)
    reaching = len(forks) if lexicon is None else len(metrics.forking_points(win, tau))
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens], dtype=np.int64)]).astype(np.int64)
    table = pd.DataFrame({
        "position": forks.astype(np.int64),
        "token": [tokens[f] for f in forks.tolist()],
        "window_entropy": win[forks],
        "token_entropy": h[forks],
        "context": context("".join(tokens), offsets, forks)})
    return Forks(table, float(tau), reaching, len(tokens), settings.estimator)


def trace_forks(store, run_id: int, trace_id: int, settings: ForkSettings = ForkSettings()) -> Forks:
    """Forking points of a stored trace of run ``run_id`` (checked: the trace is in the run)."""
    from .runs import check_trace
    check_trace(store, run_id, trace_id)
    tok = store.tokens(int(trace_id), with_alternatives=False)
    col = store.entropy_column(settings.estimator)
    if col not in tok or not tok[col].notna().any():
        raise ForkError(f"trace {trace_id} has no {settings.estimator!r} entropies")
    tokens = tok["token"].fillna("").astype(str).tolist()
    h = tok[col].to_numpy(np.float64, na_value=np.nan)
    corpus = (store.run_window_entropy(int(run_id), settings.estimator, settings.w)
              if settings.method == "corpus" else None)
    return find_forks(tokens, h, settings, corpus)
