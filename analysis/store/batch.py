"""Traces as Arrow tables for one bulk insert (per-token work over a whole batch at once)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import metrics
from ..trace import Trace, TraceError
from .schema import ENTROPY_COLUMNS, LAYER_FIELDS, LOCAL_ID_BASE, ROW_GROUP_SIZE, TRACE_META_COLUMNS


@dataclass
class Batch:
    tables: dict[str, pa.Table]
    trace_ids: list[int]


class NextIds:
    """Where the next batch of a run starts (trace id, index in the run) and which vocab
    rows the run already has, read once and then advanced batch by batch."""

    def __init__(self, first_id: int, first_idx: int, known_local: dict[str, int],
                 known_real: np.ndarray | None):
        self.first_id, self.first_idx = first_id, first_idx
        self.known_local, self.known_real = known_local, known_real

    @classmethod
    def read(cls, con, run_id: int, vocab: dict[int, str] | None) -> "NextIds":
        first_id, first_idx = con.execute(
            "SELECT (SELECT coalesce(max(trace_id), 0) + 1 FROM traces), "
            "(SELECT coalesce(max(idx), -1) + 1 FROM traces WHERE run_id = ?)", [run_id]).fetchone()
        known = dict(con.execute(
            "SELECT text, token_id FROM vocab WHERE run_id = ? AND token_id >= ?",
            [run_id, LOCAL_ID_BASE]).fetchall())
        known_real = np.asarray(con.execute(  # numpy, not a set of tuples: ~49k ids per batch
            "SELECT token_id FROM vocab WHERE run_id = ? AND token_id < ?",
            [run_id, LOCAL_ID_BASE]).fetchnumpy()["token_id"], np.int64) if vocab is not None else None
        return cls(int(first_id), int(first_idx), known, known_real)

    def build(self, traces: list[Trace], run_id: int, vocab: dict[int, str] | None) -> "Batch":
        """The batch's Arrow tables (``build_batch``), with the ids moved on past it."""
        batch = build_batch(traces, self.first_id, self.first_idx, run_id, vocab,
                            self.known_local, self.known_real)
        n = len(batch.trace_ids)
        self.first_id += n
        self.first_idx += n
        voc = batch.tables.get("vocab")
        if voc is not None and self.known_real is not None:  # build_batch added local ids itself
            ids = voc.column("token_id").to_numpy().astype(np.int64)
            self.known_real = np.concatenate([self.known_real, ids[ids < LOCAL_ID_BASE]])
        return batch


def insert_tables(con, tables: dict[str, pa.Table], replace: dict[str, str] | None = None) -> None:
    """Bulk-insert Arrow tables by column name through DuckDB's replacement scan; ``replace``
    gives SQL expressions for some columns (e.g. ids moved by an offset).

    DuckDB scans an Arrow table with one thread per record batch, so a table is handed over in
    batches of one row group (a 50,000-row batch then goes in on every core: ~1.6x faster).
    """
    replace = replace or {}
    for table, tbl in tables.items():
        if tbl.num_rows > ROW_GROUP_SIZE:
            tbl = pa.Table.from_batches(tbl.to_batches(max_chunksize=ROW_GROUP_SIZE))
        con.register("_batch", tbl)
        cols = tbl.column_names
        values = ", ".join(replace.get(c, c) for c in cols)
        con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {values} FROM _batch")
        con.unregister("_batch")


def _list_array(values: np.ndarray, mask: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """[T, k] values -> Arrow list array with the masked-out slots dropped (no Python loop)."""
    n, k = values.shape
    if k and mask.all():  # the usual case (a local model's top-k): no boolean gather, no copy
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
        flat = values.reshape(-1)
    else:
        counts = mask.sum(axis=1)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        flat = values[mask]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=dtype))


def build_batch(traces: list[Trace], first_id: int, first_idx: int, run_id: int,
                vocab: dict[int, str] | None, known_local: dict[str, int] | None = None,
                known_real: "set[int] | np.ndarray | None" = None) -> Batch:
    """Turn traces into Arrow tables for traces, trace_stats, tokens, vocab, token_layers.

    Per-token work is done once over the whole batch (concatenated arrays), not per trace.
    ``known_local`` (text -> run-local id) gains the local ids this batch gives out.
    """
    known_local = {} if known_local is None else known_local
    n_t = len(traces)
    lengths = np.array([t.n_tokens for t in traces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if n_t else np.empty(0, np.int64)
    total = int(lengths.sum())
    trace_ids = list(range(first_id, first_id + n_t))
    kmax = max((t.k for t in traces), default=0)
    boundaries = np.array([t.boundary for t in traces], dtype=np.int64)

    # ---- traces table
    trace_rows: dict[str, list] = {c: [] for c in ("source_id", "prompt",
                                                   *TRACE_META_COLUMNS, "metadata")}
    for tr in traces:
        meta = dict(tr.metadata)
        trace_rows["source_id"].append(tr.source_id)
        trace_rows["prompt"].append(tr.prompt)
        for c in TRACE_META_COLUMNS:
            v = meta.pop(c, None)
            trace_rows[c].append(None if v is None or (isinstance(v, float) and np.isnan(v)) else v)
        trace_rows["metadata"].append(json.dumps(meta, default=str) if meta else None)
    traces_tbl = pa.table({
        "trace_id": pa.array(trace_ids, pa.int64()),
        "run_id": pa.array([run_id] * n_t, pa.int32()),
        "idx": pa.array(range(first_idx, first_idx + n_t), pa.int32()),
        "n_tokens": pa.array(lengths, pa.int32()),
        "boundary": pa.array(boundaries, pa.int32()),
        "estimator": pa.array([t.estimator for t in traces], pa.string()),
        "k": pa.array([t.k for t in traces], pa.int32()),
        **{c: pa.array(v, type=_arrow_type(c)) for c, v in trace_rows.items()}})

    # ---- per-token arrays over the whole batch
    def stack(getter, fill, dtype) -> np.ndarray:
        out = np.full(total, fill, dtype=dtype)
        for tr, s in zip(traces, starts):
            v = getter(tr)
            if v is not None and tr.n_tokens:
                out[s: s + tr.n_tokens] = v
        return out

    nan = np.nan
    ents: dict[str, np.ndarray] = {
        "full": stack(lambda t: t.entropy_full, nan, np.float64),
        "full_t1": stack(lambda t: t.entropy_full_t1, nan, np.float64)}
    has = {"full": np.array([t.entropy_full is not None for t in traces], bool),
           "full_t1": np.array([t.entropy_full_t1 is not None for t in traces], bool)}
    ids = np.full((total, kmax), -1, dtype=np.int32)  # the column's type: no cast later
    lp = np.full((total, kmax), -np.inf)
    new_vocab: dict[int, str] = {}
    next_local = max(known_local.values(), default=LOCAL_ID_BASE - 1) + 1
    for tr, s in zip(traces, starts):
        if not tr.k:
            continue
        rows = slice(s, s + tr.n_tokens)
        lp[rows, : tr.k] = tr.topk_logprobs
        if tr.topk_ids is not None:
            ids[rows, : tr.k] = tr.topk_ids
        elif tr.topk_tokens is not None:
            for r, row in enumerate(tr.topk_tokens):
                for c, text in enumerate(row[: tr.k]):
                    if text is None:
                        continue
                    local = known_local.get(text)
                    if local is None:
                        local = known_local[text] = next_local
                        new_vocab[next_local] = text
                        next_local += 1
                    ids[s + r, c] = local
    lp = metrics.clean_logprobs(lp, inplace=True) if kmax else lp
    mask = (ids >= 0) & (lp > -np.inf)  # before the entropies: they reuse lp's memory
    lp32 = lp.astype(np.float32)
    has_k = np.array([t.k > 0 for t in traces], bool)
    if kmax:
        ents.update(metrics.all_topk_entropies(lp, cleaned=True))
        for tr, s in zip(traces, starts):  # values carried by the trace (an export) win
            for est, v in (tr.entropy_topk or {}).items():
                if est in ents and tr.n_tokens:
                    ents[est][s: s + tr.n_tokens] = v
    for est in metrics.TOPK_ESTIMATORS:
        has[est] = has_k
        if not kmax:
            ents[est] = np.full(total, nan)
    best_names = [t.estimator for t in traces]
    best = np.full(total, nan)
    for est in ents:
        sel = np.array([b == est for b in best_names], bool)
        if sel.any():
            rowmask = np.repeat(sel, lengths)
            best[rowmask] = ents[est][rowmask]

    seg = np.repeat(np.arange(n_t), lengths)
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    tokens = pa.table({
        "trace_id": pa.array(np.repeat(np.asarray(trace_ids, np.int64), lengths)),
        "pos": pa.array(pos.astype(np.int32)),
        "token_id": pa.array(stack(lambda t: t.token_ids, -1, np.int32)),
        "token": pa.array([tok for t in traces for tok in t.tokens], type=pa.string()),
        "logprob": pa.array(metrics.clean_logprobs(stack(lambda t: t.logprobs, nan, np.float64))
                            .astype(np.float32)),
        "entropy": pa.array(best.astype(np.float32), from_pandas=True),
        **{col: pa.array(ents[est].astype(np.float32), from_pandas=True)
           for est, col in ENTROPY_COLUMNS.items()},
        "topk_ids": _list_array(ids, mask, pa.int32()),
        "topk_logprobs": _list_array(lp32, mask, pa.float32()),
    })

    # ---- sequence entropy per trace, estimator and phase (metrics.sequence_entropy, vectorised)
    # one bin per (trace, phase): 2i the thinking part of trace i, 2i + 1 its answer part
    seg2 = seg * 2 + (pos >= np.repeat(boundaries, lengths))
    size2 = np.bincount(seg2, minlength=2 * n_t).reshape(n_t, 2)
    stat_cols: dict[str, list] = {"trace_id": [], "estimator": [], "phase": [], "mean_entropy": [], "n": []}
    tid_arr = np.asarray(trace_ids, np.int64)
    for est, h in ents.items():
        sel = has[est]
        if not sel.any():
            continue
        ok = ~np.isnan(h)
        if ok.all():
            sums2 = np.bincount(seg2, weights=h, minlength=2 * n_t).reshape(n_t, 2)
            cnt2 = size2
        else:
            sums2 = np.bincount(seg2[ok], weights=h[ok], minlength=2 * n_t).reshape(n_t, 2)
            cnt2 = np.bincount(seg2[ok], minlength=2 * n_t).reshape(n_t, 2)
        for phase, sums, cnts, sizes in (
                ("all", sums2.sum(axis=1), cnt2.sum(axis=1), size2.sum(axis=1)),
                ("thinking", sums2[:, 0], cnt2[:, 0], size2[:, 0]),
                ("answer", sums2[:, 1], cnt2[:, 1], size2[:, 1])):
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(cnts > 0, sums / np.maximum(cnts, 1), nan)
            stat_cols["trace_id"].append(tid_arr[sel])
            stat_cols["estimator"].extend([est] * int(sel.sum()))
            stat_cols["phase"].extend([phase] * int(sel.sum()))
            stat_cols["mean_entropy"].append(means[sel])
            stat_cols["n"].append(sizes[sel])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt)  # noqa: E731
    stats_tbl = pa.table({
        "trace_id": pa.array(cat(stat_cols["trace_id"], np.int64)),
        "estimator": pa.array(stat_cols["estimator"], pa.string()),
        "phase": pa.array(stat_cols["phase"], pa.string()),
        "mean_entropy": pa.array(cat(stat_cols["mean_entropy"], np.float64), from_pandas=True),
        "n": pa.array(cat(stat_cols["n"], np.int32))})

    lens_ids = [np.asarray(t.layers["lens_top1"], np.int32).ravel() for t in traces
                if t.layers and t.layers.get("lens_top1") is not None]  # logit-lens top-1 hover text
    if vocab and (kmax or lens_ids):
        # the ids that need text: a bitmap over the real ids (int32, no sort, no int64 copy)
        parts = [ids.reshape(-1), stack(lambda t: t.token_ids, -1, np.int32), *lens_ids]
        top = max((int(a.max(initial=-1, where=(a < LOCAL_ID_BASE))) for a in parts if a.size), default=-1)
        if top >= 0:
            seen = np.zeros(top + 2, bool)  # slot top + 1 takes padding, local ids and masked slots
            for a in parts:
                if a.size and a.min() >= 0 and a.max() <= top:  # the usual case: no padding
                    seen[a] = True
                else:
                    seen[np.where((a >= 0) & (a <= top), a, top + 1)] = True
            seen = seen[: top + 1]
            if known_real is not None and len(known_real):  # only ids the run has no text for yet
                kr = np.fromiter(known_real, np.int64) if isinstance(known_real, (set, frozenset)) \
                    else np.asarray(known_real, np.int64)
                seen[kr[kr < seen.size]] = False
            for i in np.flatnonzero(seen).tolist():
                if i in vocab:
                    new_vocab[i] = vocab[i]

    tables = {"traces": traces_tbl, "trace_stats": stats_tbl, "tokens": tokens}
    if new_vocab:
        tables["vocab"] = pa.table({
            "run_id": pa.array([run_id] * len(new_vocab), pa.int32()),
            "token_id": pa.array(list(new_vocab), pa.int32()),
            "text": pa.array(list(new_vocab.values()), pa.string())})
    layer_tables = [_layer_table(tid, tr.n_tokens, tr.layers)
                    for tid, tr in zip(trace_ids, traces) if tr.layers]
    if layer_tables:
        tables["token_layers"] = pa.concat_tables(layer_tables, promote_options="default")
    return Batch(tables, trace_ids)


_ARROW_TYPES = {"trace_id": pa.int64(), "run_id": pa.int32(), "idx": pa.int32(), "n_tokens": pa.int32(),
                "boundary": pa.int32(), "k": pa.int32(), "level": pa.float64(), "correct": pa.bool_(),
                "sample_idx": pa.int32()}


def _arrow_type(col: str) -> pa.DataType:
    return _ARROW_TYPES.get(col, pa.string())


def _layer_table(trace_id: int, n: int, layers: dict[str, np.ndarray]) -> pa.Table:
    cols: dict[str, pa.Array] = {"trace_id": pa.array(np.full(n, trace_id, np.int64)),
                                 "pos": pa.array(np.arange(n, dtype=np.int32))}
    for name, dtype in LAYER_FIELDS.items():
        arr = layers.get(name)
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise TraceError(f"layers[{name!r}] has shape {arr.shape}, expected ({n}, L)")
        flat = pa.array(arr.reshape(-1).astype(dtype.to_pandas_dtype()), type=dtype)
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, arr.shape[1]).cast(pa.list_(dtype))
    return pa.table(cols)
