"""The one canonical trace every source (local model, uploaded file) is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics
from .errors import TraceError
from .settings import THINK_MARKER


@dataclass
class Trace:
    """One completion with per-token records.

    Arrays have one row per completion token (length T). Top-k arrays are [T, k]; a slot
    with no alternative has id -1 and logprob -inf. Entropies are in nats.
    """

    prompt: str
    tokens: list[str]
    logprobs: np.ndarray                      # [T] chosen token's logprob (nats; the source's T), NaN if unknown
    token_ids: np.ndarray | None = None       # [T] int, -1 if unknown
    topk_ids: np.ndarray | None = None        # [T, k] int
    topk_tokens: list[list[str]] | None = None  # text of the alternatives (when ids are unknown)
    topk_logprobs: np.ndarray | None = None   # [T, k] float
    entropy_full: np.ndarray | None = None    # [T] at the sampling temperature (1 when greedy)
    entropy_full_t1: np.ndarray | None = None  # [T] at temperature 1
    boundary: int | None = None               # first answer token; None -> computed from marker
    marker: str | None = THINK_MARKER
    source_id: str | None = None              # id in the source file (custom_id, response id, ...)
    metadata: dict[str, Any] = field(default_factory=dict)  # problem_id, gold, level, correct, ...
    layers: dict[str, np.ndarray] | None = None  # per-layer arrays [T, L] (logit lens, attention)
    # top-k estimates already computed (estimator -> [T] nats), kept instead of recomputing them
    # from the stored float32 logprobs, so that re-importing an export gives identical values
    entropy_topk: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        n = len(self.tokens)
        self.logprobs = np.asarray(self.logprobs, dtype=np.float64)
        if self.logprobs.shape != (n,):
            raise TraceError(f"logprobs has shape {self.logprobs.shape}, expected ({n},) for {n} tokens")
        if self.token_ids is not None:
            self.token_ids = np.asarray(self.token_ids, dtype=np.int64)
            if self.token_ids.shape != (n,):
                raise TraceError(f"token_ids has shape {self.token_ids.shape}, expected ({n},)")
        if self.topk_logprobs is not None:
            self.topk_logprobs = np.asarray(self.topk_logprobs, dtype=np.float64)
            if self.topk_logprobs.ndim != 2 or self.topk_logprobs.shape[0] != n:
                raise TraceError(f"topk_logprobs has shape {self.topk_logprobs.shape}, expected ({n}, k)")
            if self.topk_ids is not None:
                self.topk_ids = np.asarray(self.topk_ids, dtype=np.int64)
                if self.topk_ids.shape != self.topk_logprobs.shape:
                    raise TraceError(f"topk_ids has shape {self.topk_ids.shape}, "
                                     f"expected {self.topk_logprobs.shape} like topk_logprobs")
            if self.topk_tokens is not None and len(self.topk_tokens) != n:
                raise TraceError(f"topk_tokens has {len(self.topk_tokens)} rows, expected {n}")
        for name in ("entropy_full", "entropy_full_t1"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, dtype=np.float64)
                if v.shape != (n,):
                    raise TraceError(f"{name} has shape {v.shape}, expected ({n},)")
                setattr(self, name, v)
        if self.entropy_topk:
            self.entropy_topk = {e: np.asarray(v, dtype=np.float64) for e, v in self.entropy_topk.items()}
            for e, v in self.entropy_topk.items():
                if v.shape != (n,):
                    raise TraceError(f"entropy_topk[{e!r}] has shape {v.shape}, expected ({n},)")
        if self.boundary is None:
            self.boundary = metrics.phase_boundary(self.tokens, self.marker)
        if not 0 <= self.boundary <= n:
            raise TraceError(f"boundary {self.boundary} outside 0..{n}")

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def completion(self) -> str:
        return "".join(self.tokens)

    @property
    def k(self) -> int:
        return 0 if self.topk_logprobs is None else int(self.topk_logprobs.shape[1])

    @property
    def estimator(self) -> str:
        """The best estimator this trace's numbers allow."""
        if self.entropy_full is not None:
            return "full"
        if self.k > 0:
            return "topk_renorm"
        return "none"

    def entropies(self) -> dict[str, np.ndarray]:
        """Every entropy estimate available for this trace, by estimator (nats, [T])."""
        out: dict[str, np.ndarray] = {}
        if self.entropy_full is not None:
            out["full"] = self.entropy_full
        if self.entropy_full_t1 is not None:
            out["full_t1"] = self.entropy_full_t1
        if self.k > 0:
            out.update(metrics.all_topk_entropies(self.topk_logprobs))
        return out

    def primary_entropy(self) -> np.ndarray:
        e = self.entropies()
        return e.get(self.estimator, np.full(self.n_tokens, np.nan))
