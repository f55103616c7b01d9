"""Store verbs for signals and comparisons: a run's token values in one columnar read."""

from __future__ import annotations

import numpy as np

from .values import _filled


class SignalsVerbs:
    """Mixed into ``Store``: reads the signals, token-entropy and comparison views need."""

    def run_token_values(self, run_id: int, estimator: str = "best", with_text: bool = False,
                         with_ids: bool = False) -> dict[str, np.ndarray]:
        """Every token of a run as arrays ordered by trace_id then pos (the order of
        ``run_window_entropy``): trace_id, pos, entropy (nats, ``estimator``; NaN where
        missing), logprob (nats, NaN where unknown), and on request token (text) and token_id
        (-1 where unknown). One columnar read: no per-trace query."""
        col = self.entropy_column(estimator)
        extra = (", token" if with_text else "") + (", token_id" if with_ids else "")
        with self.connect(write=False) as con:
            got = con.execute(f"""
                SELECT trace_id, pos, {col} AS entropy, logprob{extra} FROM tokens
                WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = ?)
                ORDER BY trace_id, pos""", [int(run_id)]).fetchnumpy()
        out = {"trace_id": np.asarray(got["trace_id"], np.int64), "pos": np.asarray(got["pos"], np.int64),
               "entropy": _filled(got["entropy"], np.nan).astype(np.float64),
               "logprob": _filled(got["logprob"], np.nan).astype(np.float64)}
        if with_text:
            out["token"] = _filled(got["token"], "").astype(object)
        if with_ids:
            out["token_id"] = _filled(got["token_id"], -1).astype(np.int64)
        return out
