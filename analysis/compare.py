"""Entropy across runs, models and checkpoints.

- The Beyond-80/20 view of a run (arXiv 2506.01939): the distribution of token entropies
  (the paper finds more than half below 0.01 nats and the 80th percentile at 0.672 nats for
  Qwen3-8B) and the tokens most often among the high-entropy 20 %.
- Models on the same tokens: a stored run re-scored by another model with teacher forcing
  (``rescore_run``), then compared position by position (``compare_positions``): the
  overlap of the two models' top-20 % positions and the entropy change binned by the first
  model's entropy percentile, as the paper does for base vs RL checkpoints.
- Checkpoints over training (The Entropy Mechanism, arXiv 2505.22617): runs tagged with a
  ``checkpoint_step`` form a series of mean entropy and accuracy against step, with the fit
  R = -a exp(H) + b of accuracy against entropy.

All entropies are in nats.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from . import signals as sig
from .errors import CompareError
from .metrics import entropy_from_logp, logprob_conditions, strip_space_marker
from .settings import THINK_MARKER
from .store import json_settings

#: share of tokens called high-entropy (Beyond the 80/20 rule)
TOP_SHARE = 0.20
#: the paper's "low entropy" line, nats
LOW_ENTROPY = 0.01
#: the smallest entropy the log-axis histogram resolves, nats (below it: one bin "< 1e-5")
HIST_FLOOR = 1e-5
#: run settings key of a run's training step
CHECKPOINT_KEY = "checkpoint_step"


# --------------------------------------------------------------------------- Beyond 80/20


def display_token(token: str) -> str:
    """A token as counted among the high-entropy ones: without the tokenizer's space marker,
    lower case ('Ġwait' and ' Wait' count together); whitespace-only tokens shown by name."""
    s = strip_space_marker(token or "")
    if s:
        return s
    if "\n" in (token or "") or "\u010a" in (token or ""):
        return "⏎ (newline)"
    return "␣ (space)" if token else "(empty)"


@dataclass
class TokenEntropyProfile:
    """The token-entropy distribution of a run (nats, one estimator)."""

    run_id: int
    estimator: str
    n_tokens: int
    share_below: float            # share of tokens with H < LOW_ENTROPY
    p80: float                    # the 80th percentile of H (the top-20 % threshold)
    median: float
    hist: pd.DataFrame            # bin_low, bin_high, count, share (log-spaced; first bin: H < HIST_FLOOR)
    top_tokens: pd.DataFrame      # token, count_top, count_all, share_of_top, share_high


def token_entropy_profile(entropy: np.ndarray, tokens: Sequence[str], run_id: int = 0, estimator: str = "best",
                          top_share: float = TOP_SHARE, n_bins: int = 50, n_top: int = 30) -> TokenEntropyProfile:
    """Histogram (log axis), share below 0.01 nats, the 80th percentile and the tokens most often
    among the top ``top_share`` by entropy. NaN entropies are left out."""
    h = np.asarray(entropy, np.float64)
    tok = np.asarray(tokens, dtype=object)
    ok = ~np.isnan(h)
    h, tok = h[ok], tok[ok]
    if not h.size:
        raise CompareError(f"run {run_id} has no token entropies for estimator {estimator!r}")
    thr = float(np.quantile(h, 1 - top_share))
    hi = max(float(h.max()), HIST_FLOOR * 10)
    edges = np.concatenate([[0.0], np.logspace(math.log10(HIST_FLOOR), math.log10(hi * 1.0001), n_bins + 1)])
    counts, _ = np.histogram(np.clip(h, 0, None), edges)
    hist = pd.DataFrame({"bin_low": edges[:-1], "bin_high": edges[1:], "count": counts, "share": counts / h.size})
    words = pd.Series([display_token(t) for t in tok])
    top = words[h >= thr].value_counts()
    total = words.value_counts()
    tt = pd.DataFrame({"token": top.index, "count_top": top.to_numpy()})
    tt["count_all"] = tt["token"].map(total).astype(int)
    tt["share_of_top"] = tt["count_top"] / max(int((h >= thr).sum()), 1)
    tt["share_high"] = tt["count_top"] / tt["count_all"]
    return TokenEntropyProfile(run_id, estimator, int(h.size), float((h < LOW_ENTROPY).mean()), thr,
                               float(np.median(h)), hist, tt.head(n_top).reset_index(drop=True))


def run_token_entropy_profile(store, run_id: int, estimator: str = "best", **kw) -> TokenEntropyProfile:
    """The token-entropy profile of a stored run; ``best`` is named as the run's own estimator."""
    v = store.run_token_values(run_id, estimator, with_text=True)
    if estimator == "best":
        est = store.traces(run_id)["estimator"]
        estimator = str(est.mode().iloc[0]) if len(est) else estimator
    return token_entropy_profile(v["entropy"], v["token"], int(run_id), estimator, **kw)


# --------------------------------------------------------------------------- re-scoring


@dataclass
class RescoreResult:
    run_id: int
    source_run: int
    n_traces: int
    n_tokens: int
    same_tokens: int              # traces scored exactly on the original token ids
    retokenised: int              # traces whose ids another tokenizer reads differently
    seconds: float
    forward_seconds: float        # of which the model's forward passes
    notes: list[str] = field(default_factory=list)


def _run_settings(store, run_id: int) -> tuple[dict, str | None]:
    runs = store.runs()
    row = runs[runs["run_id"] == int(run_id)]
    if row.empty:
        raise CompareError(f"no run {run_id} in {store.path}")
    return json_settings(row["settings"].iloc[0]), row["model"].iloc[0]


def same_ids(tok, ids: np.ndarray, text: str) -> bool:
    """True when ``tok`` reads the stored token ids as the stored text: then teacher forcing on
    those ids scores exactly the original tokens."""
    if ids.size == 0:
        return True
    if (ids < 0).any() or int(ids.max()) >= len(tok):
        return False
    return tok.decode(ids.tolist(), skip_special_tokens=False) == text


#: rows of logits reduced at once by ``score_ids`` (a block of [rows x vocabulary] stays in cache)
SCORE_ROWS = 16


def score_ids(lm, prompt_ids: Sequence[int], ids: Sequence[int], temperature: float, top_k: int):
    """Teacher-force ``ids`` after ``prompt_ids``: one forward pass, the logits kept only for the
    positions that predict a completion token. Returns per completion token (numpy):
    entropy at T, entropy at T = 1, chosen logprob at T, top-k ids and logprobs at T.

    The logits are reduced in blocks of ``SCORE_ROWS`` rows, so every pass over a block runs in
    cache (on the whole [tokens x vocabulary] logits each pass would go to memory)."""
    import torch

    n = len(ids)
    full = torch.tensor([list(prompt_ids) + list(ids)])
    target = torch.tensor(list(ids))
    k = min(top_k, len(lm.tokenizer)) if top_k else 0
    h = torch.empty(n)
    h1 = torch.empty(n)
    chosen = torch.empty(n)
    top_v = torch.empty((n, k))
    top_i = torch.empty((n, k), dtype=torch.long)
    with torch.inference_mode():
        logits = lm.model(input_ids=full, logits_to_keep=n + 1).logits[0, :n]
        for a in range(0, n, SCORE_ROWS):
            rows = slice(a, a + SCORE_ROWS)
            z = logits[rows].float()
            logp1 = torch.log_softmax(z, dim=-1)
            logp = logp1 if temperature == 1.0 else torch.log_softmax(z / temperature, dim=-1)
            h[rows] = entropy_from_logp(logp)
            h1[rows] = h[rows] if temperature == 1.0 else entropy_from_logp(logp1)
            chosen[rows] = logp.gather(1, target[rows, None]).squeeze(1)
            if k:
                top_v[rows], top_i[rows] = torch.topk(logp, k, dim=-1)
    return (h.numpy().astype(np.float64), h1.numpy().astype(np.float64), chosen.numpy().astype(np.float64),
            top_i.numpy() if k else None, top_v.numpy().astype(np.float64) if k else None)


def rescore_run(store, run_id: int, lm, name: str | None = None, temperature: float | None = None,
                top_k: int = 20, batch: int = 16, checkpoint_step: float | None = None,
                progress: Callable[[int, int], None] | None = None) -> RescoreResult:
    """Score every trace of a stored run with the model ``lm`` (teacher forcing) into a new run.

    Where ``lm``'s tokenizer reads the stored token ids as the stored text, the original ids
    are scored as they are, so both runs hold the same tokens position by position. Elsewhere
    the completion text is tokenised anew (``retokenised`` counts those traces) and the
    comparison aligns positions by character offset. The prompt goes through ``lm``'s own
    chat template when the original run used one. ``temperature`` defaults to the original
    run's sampling temperature (1 for runs without one).
    """
    from .record import GenerationSettings, build_prompt_ids, token_pieces, vocab_for
    from .trace import Trace

    run_id = int(run_id)
    settings, src_model = _run_settings(store, run_id)
    if temperature is None:
        temperature = float(settings.get("temperature", 1.0)) if settings.get("do_sample", True) else 1.0
        if "temperature" not in settings:
            temperature = 1.0
    if temperature <= 0:
        raise CompareError(f"temperature must be > 0, got {temperature}")
    gen = GenerationSettings(temperature=temperature, do_sample=temperature != 1.0, top_k=top_k,
                             chat_template=bool(settings.get("chat_template", True)),
                             system_prompt=settings.get("system_prompt"),
                             marker=settings.get("marker") or THINK_MARKER)
    tr = store.traces(run_id).sort_values("trace_id").reset_index(drop=True)
    if tr.empty:
        raise CompareError(f"run {run_id} has no traces to re-score")
    tok = store.run_token_values(run_id, "best", with_text=True, with_ids=True)
    cuts = np.searchsorted(tok["trace_id"], tr["trace_id"].to_numpy(), side="left")
    ends = np.append(cuts[1:], tok["trace_id"].size)
    new_settings = {"rescored_from": run_id, "rescored_from_model": src_model, "temperature": temperature,
                    "do_sample": temperature != 1.0, "top_k": top_k, "chat_template": gen.chat_template,
                    "system_prompt": gen.system_prompt, "marker": gen.marker,
                    **logprob_conditions(temperature, "none")}  # teacher forcing: all logits at T
    if checkpoint_step is not None:
        new_settings[CHECKPOINT_KEY] = checkpoint_step
    rid = store.create_run(name or f"run {run_id} re-scored · {lm.name.split('/')[-1]}", "rescore", lm.name,
                           new_settings)
    t0 = time.perf_counter()
    fwd = 0.0
    same = retok = n_tokens = 0
    status = "complete"
    meta_cols = ["problem_id", "question", "gold_answer", "level", "correct", "pred_answer", "sample_idx"]
    pending: list = []
    try:
        for j, row in enumerate(tr.itertuples(index=False)):
            a, b = cuts[j], ends[j]
            pieces = tok["token"][a:b].tolist()
            text = "".join(p or "" for p in pieces)
            ids = tok["token_id"][a:b]
            exact = same_ids(lm.tokenizer, ids, text)
            if exact:
                use_ids, use_pieces, boundary = ids.tolist(), pieces, int(row.boundary)
                same += 1
            else:
                use_ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
                use_pieces, boundary = token_pieces(lm.tokenizer, use_ids), None
                retok += 1
            prompt_ids = build_prompt_ids(lm, row.prompt or "", gen)
            f0 = time.perf_counter()
            if use_ids:
                h, h1, lp, ti, tl = score_ids(lm, prompt_ids, use_ids, temperature, top_k)
            else:
                h = h1 = lp = np.empty(0)
                ti = tl = None
            fwd += time.perf_counter() - f0
            meta = {**json_settings(row.metadata), "rescored_from_trace": int(row.trace_id),
                    "same_tokens": bool(exact)}
            for c in meta_cols:
                v = getattr(row, c)
                if v is not None and not (isinstance(v, float) and math.isnan(v)) and v is not pd.NA:
                    meta[c] = v.item() if hasattr(v, "item") else v
            pending.append(Trace(prompt=row.prompt or "", tokens=use_pieces, logprobs=lp,
                                 token_ids=np.asarray(use_ids, np.int64), topk_ids=ti, topk_logprobs=tl,
                                 entropy_full=h, entropy_full_t1=h1, boundary=boundary, marker=gen.marker,
                                 source_id=row.source_id, metadata=meta))
            n_tokens += len(use_ids)
            if len(pending) >= batch or j == len(tr) - 1:
                store.add_traces(rid, pending, vocab_for(lm, pending))
                pending = []
            if progress:
                progress(j + 1, len(tr))
    except BaseException:
        status = "interrupted"
        raise
    finally:
        store.finish_run(rid, status)
    notes = []
    if retok:
        notes.append(f"{retok} of {len(tr)} traces: {lm.name}'s tokenizer reads the stored token ids differently, "
                     "so their text was tokenised anew; positions are compared where the token boundaries agree")
    return RescoreResult(rid, run_id, len(tr), n_tokens, same, retok, time.perf_counter() - t0, fwd, notes)


# --------------------------------------------------------------------------- same tokens


@dataclass
class PositionComparison:
    """Two runs over the same text, position by position (nats)."""

    run_a: int
    run_b: int
    positions: pd.DataFrame       # trace_a, trace_b, pos_a, pos_b, token, h_a, h_b, diff (= h_b - h_a)
    pairs: int                    # trace pairs with the same text
    skipped: int                  # pairs whose texts differ (not compared)
    aligned_share: float          # share of A's positions with a B token starting at the same character
    overlap_top: float            # |top-20 % of A ∩ top-20 % of B| / |top-20 % of A|
    threshold_a: float
    threshold_b: float
    binned: pd.DataFrame          # by A's entropy percentile: bin, count, mean_h_a, mean_h_b, mean_diff
    correlation: float            # Pearson r of h_a and h_b over aligned positions
    notes: list[str] = field(default_factory=list)


def _starts(pieces: Sequence[str]) -> np.ndarray:
    lengths = np.fromiter((len(p or "") for p in pieces), np.int64, len(pieces))
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]) if lengths.size else np.empty(0, np.int64)


def _pairs(store, run_a: int, run_b: int) -> list[tuple[int, int]]:
    """(trace in A, trace in B): by B's ``rescored_from_trace`` when B re-scored A, else by order."""
    ta = store.traces(run_a).sort_values("idx")
    tb = store.traces(run_b).sort_values("idx")
    src = [json_settings(m).get("rescored_from_trace") for m in tb["metadata"]]
    in_a = set(ta["trace_id"].astype(int))
    if any(s in in_a for s in src if s is not None):
        return [(int(s), int(t)) for s, t in zip(src, tb["trace_id"]) if s in in_a]
    return [(int(x), int(y)) for x, y in zip(ta["trace_id"], tb["trace_id"])]


def compare_positions(store, run_a: int, run_b: int, estimator: str = "best", top_share: float = TOP_SHARE,
                      n_bins: int = 10) -> PositionComparison:
    """Entropy of model A vs model B on the same text, position by position.

    Pairs whose completion texts differ are skipped (they are not the same tokens). Within a
    pair, A's position t is compared with the B position whose token starts at the same
    character (all positions when both tokenised alike). The top-20 % thresholds are each
    run's 80th percentile over the compared positions.
    """
    run_a, run_b = int(run_a), int(run_b)
    va = store.run_token_values(run_a, estimator, with_text=True)
    vb = store.run_token_values(run_b, estimator, with_text=True)

    def spans(v):
        tid = v["trace_id"]
        u, first = np.unique(tid, return_index=True)
        last = np.append(first[1:], tid.size)
        return {int(t): (a, b) for t, a, b in zip(u, first, last)}

    sa, sb = spans(va), spans(vb)
    rows = {k: [] for k in ("trace_a", "trace_b", "pos_a", "pos_b", "h_a", "h_b")}
    tokens: list = []
    pairs = skipped = n_a = 0
    for ta, tb in _pairs(store, run_a, run_b):
        a0, a1 = sa.get(ta, (0, 0))
        b0, b1 = sb.get(tb, (0, 0))
        pa, pb = va["token"][a0:a1].tolist(), vb["token"][b0:b1].tolist()
        if "".join(p or "" for p in pa) != "".join(p or "" for p in pb):
            skipped += 1
            continue
        pairs += 1
        n_a += a1 - a0
        if pa == pb:  # the same tokens: every position
            ia = ib = np.arange(len(pa))
        else:
            st_a, st_b = _starts(pa), _starts(pb)
            # empty pieces (a character split over byte tokens) share a start: the first only
            keep_a = np.concatenate([[True], st_a[1:] != st_a[:-1]]) if st_a.size else st_a.astype(bool)
            at = np.searchsorted(st_b, st_a)
            hit = keep_a & (at < st_b.size)
            hit[hit] = st_b[at[hit]] == st_a[hit]
            ia, ib = np.flatnonzero(hit), at[hit]
        rows["trace_a"].append(np.full(ia.size, ta))
        rows["trace_b"].append(np.full(ia.size, tb))
        rows["pos_a"].append(ia)
        rows["pos_b"].append(ib)
        rows["h_a"].append(va["entropy"][a0:a1][ia])
        rows["h_b"].append(vb["entropy"][b0:b1][ib])
        tokens.extend(va["token"][a0:a1][ia].tolist())
    if not pairs:
        raise CompareError(f"runs {run_a} and {run_b} share no trace with the same text: re-score run {run_a} "
                           f"with the other model first (thinkscope rescore {run_a} --model ...)")
    pos = pd.DataFrame({k: np.concatenate(v) for k, v in rows.items()})
    pos["token"] = tokens
    pos["diff"] = pos["h_b"] - pos["h_a"]
    ok = pos["h_a"].notna() & pos["h_b"].notna()
    d = pos[ok]
    ha, hb = d["h_a"].to_numpy(), d["h_b"].to_numpy()
    notes = []
    if not len(d):
        raise CompareError(f"runs {run_a} and {run_b} have no position with an entropy in both")
    tha, thb = float(np.quantile(ha, 1 - top_share)), float(np.quantile(hb, 1 - top_share))
    top_a, top_b = ha >= tha, hb >= thb
    overlap = float((top_a & top_b).sum() / max(top_a.sum(), 1))
    # percentile of A's entropy by rank (ties share the mean rank), in n_bins equal bins
    ranks = pd.Series(ha).rank(method="average").to_numpy()
    pct = (ranks - 0.5) / ha.size
    b = np.minimum((pct * n_bins).astype(int), n_bins - 1)
    binned = pd.DataFrame({"bin": b, "h_a": ha, "h_b": hb}).groupby("bin").agg(
        count=("h_a", "size"), mean_h_a=("h_a", "mean"), mean_h_b=("h_b", "mean")).reset_index()
    binned["mean_diff"] = binned["mean_h_b"] - binned["mean_h_a"]
    binned["percentile"] = [f"{100 * k / n_bins:.0f}–{100 * (k + 1) / n_bins:.0f}" for k in binned["bin"]]
    corr = float(np.corrcoef(ha, hb)[0, 1]) if ha.size > 1 and ha.std() > 0 and hb.std() > 0 else float("nan")
    if skipped:
        notes.append(f"{skipped} trace pair(s) skipped: their texts differ, so they are not the same tokens")
    return PositionComparison(run_a, run_b, pos, pairs, skipped, float(ok.sum() / max(n_a, 1)) if n_a else 0.0,
                              overlap, tha, thb, binned, corr, notes)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_step(settings) -> float | None:
    """A run's training step from its settings (``checkpoint_step``), None when untagged."""
    v = json_settings(settings).get(CHECKPOINT_KEY)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def tag_checkpoint(store, run_id: int, step: float | None) -> None:
    """Record (or, with None, remove) a run's training step in its settings."""
    if step is not None and not math.isfinite(float(step)):
        raise CompareError(f"checkpoint step must be a finite number, got {step}")
    store.merge_settings(int(run_id), {CHECKPOINT_KEY: None if step is None else float(step)})


@dataclass
class ExpFit:
    """R = -a exp(H) + b (The Entropy Mechanism, arXiv 2505.22617): least squares of R on exp(H),
    with 95 % t-intervals of a and b (n - 2 degrees of freedom); None where n is too small."""

    a: float
    b: float
    a_low: float | None
    a_high: float | None
    b_low: float | None
    b_high: float | None
    r2: float
    n: int

    def predict(self, h) -> np.ndarray:
        return -self.a * np.exp(np.asarray(h, np.float64)) + self.b


def fit_exp(h, r) -> ExpFit | None:
    """Fit R = -a exp(H) + b; None with fewer than 2 points or a single entropy value."""
    from .difficulty import t975

    h = np.asarray(h, np.float64)
    r = np.asarray(r, np.float64)
    ok = ~np.isnan(h) & ~np.isnan(r)
    h, r = h[ok], r[ok]
    if h.size < 2 or np.ptp(h) == 0:
        return None
    x = np.exp(h)
    X = np.column_stack([np.ones_like(x), -x])
    coef, *_ = np.linalg.lstsq(X, r, rcond=None)
    b, a = float(coef[0]), float(coef[1])
    resid = r - X @ coef
    ss_tot = float(((r - r.mean()) ** 2).sum())
    r2 = 1 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    if h.size < 3:
        return ExpFit(a, b, None, None, None, None, r2, int(h.size))
    s2 = float((resid ** 2).sum()) / (h.size - 2)
    cov = s2 * np.linalg.inv(X.T @ X)
    t = float(t975(np.array([h.size - 2]))[0])
    sb, sa = math.sqrt(max(cov[0, 0], 0)), math.sqrt(max(cov[1, 1], 0))
    return ExpFit(a, b, a - t * sa, a + t * sa, b - t * sb, b + t * sb, r2, int(h.size))


@dataclass
class CheckpointSeries:
    table: pd.DataFrame           # one row per run: run_id, name, step, n_traces, n_tokens, mean_entropy,
    #                               graded, accuracy, acc_low, acc_high, high_share, entropy_change_pct
    estimator: str
    high_threshold: float         # nats: the first step's top-20 % token entropy threshold
    fit: ExpFit | None
    notes: list[str] = field(default_factory=list)


def checkpoint_runs(store) -> pd.DataFrame:
    """Runs tagged with a checkpoint step: run_id, name, model, step (sorted by step)."""
    runs = store.runs()
    runs = runs.assign(step=[checkpoint_step(s) for s in runs["settings"]])
    return runs[runs["step"].notna()].sort_values(["step", "run_id"])[["run_id", "name", "model", "step"]]


def checkpoint_series(store, run_ids: Sequence[int] | None = None, estimator: str = "best",
                      top_share: float = TOP_SHARE) -> CheckpointSeries:
    """Mean token entropy (nats, token-weighted over the run), accuracy (95 % Wilson interval)
    and the share of high-entropy tokens per checkpoint, and the fit of accuracy on entropy.

    High-entropy tokens are those at or above the first step's top-``top_share`` threshold, kept
    fixed along the series (a per-run quantile would be 20 % at every step by definition).
    """
    tagged = checkpoint_runs(store)
    if run_ids is not None:
        want = {int(r) for r in run_ids}
        missing = want - set(tagged["run_id"].astype(int))
        if missing:
            raise CompareError(f"run(s) {', '.join(map(str, sorted(missing)))} have no checkpoint step; tag them "
                               "with `thinkscope checkpoint RUN --step N`")
        tagged = tagged[tagged["run_id"].isin(want)]
    if tagged.empty:
        raise CompareError("no run is tagged with a checkpoint step (generate or ingest with --checkpoint-step N, "
                           "or `thinkscope checkpoint RUN --step N`)")
    rows, thr = [], float("nan")
    for r in tagged.itertuples(index=False):
        v = store.run_token_values(int(r.run_id), estimator)
        h = v["entropy"][~np.isnan(v["entropy"])]
        if np.isnan(thr) and h.size:
            thr = float(np.quantile(h, 1 - top_share))
        tr = store.traces(int(r.run_id))
        c = tr["correct"].dropna().astype(bool)
        lo, hi = sig.wilson_interval(int(c.sum()), int(c.size))
        rows.append({"run_id": int(r.run_id), "name": r.name, "step": float(r.step), "n_traces": len(tr),
                     "n_tokens": int(h.size), "mean_entropy": float(h.mean()) if h.size else np.nan,
                     "graded": int(c.size), "accuracy": float(c.mean()) if c.size else np.nan,
                     "acc_low": lo, "acc_high": hi,
                     "high_share": float((h >= thr).mean()) if h.size else np.nan})
    table = pd.DataFrame(rows)
    if estimator == "best":  # named as the first run's own estimator
        est = store.traces(int(tagged["run_id"].iloc[0]))["estimator"]
        estimator = str(est.mode().iloc[0]) if len(est) else estimator
    fit = fit_exp(table["mean_entropy"], table["accuracy"])
    notes = []
    if fit is None:
        notes.append("no fit of accuracy on entropy: it needs at least two checkpoints with graded traces and "
                     "different entropies")
    elif fit.a_low is None:
        notes.append("two checkpoints: the fit passes through both points exactly, with no interval")
    first = table["mean_entropy"].iloc[0]
    table["entropy_change_pct"] = 100 * (table["mean_entropy"] - first) / first if first else np.nan
    return CheckpointSeries(table, estimator, thr, fit, notes)
