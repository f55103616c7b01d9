"""The store's verbs: every read and write of runs, traces, tokens and layer records."""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable, Iterable

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from .. import metrics
from ..errors import DuplicateContentError
from ..trace import Trace
from .batch import Batch, NextIds, insert_tables
from .branches import BranchVerbs
from .connection import Database, StoreError, _finish, _writer, writer_gone
from .schema import ENTROPY_COLUMNS, LAYER_FIELDS, TRACE_META_COLUMNS
from .server import ServerRunsMixin
from .signals import SignalsVerbs
from .values import _filled, json_settings, json_text, valid_text

#: batches built ahead of the one being written by ``Store.add_batches`` (memory: about
#: 250 bytes per token row of each)
WRITE_AHEAD = 2
#: a trace's fields in the rows of ``Store.run_token_rows`` and ``Store.run_empty_traces``
RUN_TRACE_FIELDS = ("trace_idx", "source_id", "prompt", "boundary", *TRACE_META_COLUMNS, "metadata")
_TRACE_COLS = "t.idx AS trace_idx, " + ", ".join(f"t.{c}" for c in RUN_TRACE_FIELDS[1:])


def _marks(ids: list) -> str:
    return ", ".join("?" * len(ids))


def _insert_run(con, name: str, source: str, model: str | None, settings: dict, status: str,
                content_hash: str | None, writer: str | None = None, n_traces: int = 0,
                n_tokens: int = 0) -> int:
    """Insert a run row with the next free id (in the caller's transaction); return the id."""
    run_id = int(con.execute("SELECT coalesce(max(run_id), 0) + 1 FROM runs").fetchone()[0])
    con.execute(
        "INSERT INTO runs (run_id, name, source, model, settings, created_at, status, content_hash, "
        "n_traces, n_tokens, writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, valid_text(name), source, valid_text(model), json_text(settings),
         datetime.now(timezone.utc).replace(tzinfo=None), status, content_hash, n_traces, n_tokens, writer])
    return run_id


class Store(SignalsVerbs, BranchVerbs, ServerRunsMixin, Database):
    """A thinkscope store: ``Database``'s connections plus the verbs that read and write it.

    ``warnings`` collects what went wrong without losing data (a checkpoint that failed after
    a commit), for the caller to report."""

    # ------------------------------------------------------------------ writes
    def create_run(self, name: str, source: str, model: str | None = None,
                   settings: dict | None = None, content_hash: str | None = None,
                   status: str = "running") -> int:
        """Insert a run row and return its id. A 'running' run records this process as its
        writer, so that it is shown as interrupted once the process is gone."""
        with self.connect() as con:
            con.execute("BEGIN")
            run_id = _insert_run(con, name, source, model, settings or {}, status, content_hash,
                                 writer=_writer() if status == "running" else None)
            con.execute("COMMIT")
        return run_id

    def import_staged(self, tables: Iterable[tuple[str, pa.Table]], run: dict, content_hash: str | None,
                      n_traces: int, n_tokens: int, memory_limit: str | None = None) -> int:
        """Store a staged file's rows as one new complete run, in one transaction; return its id.

        ``tables`` yields (table name, rows) as ``build_batch`` made them for a run of id 1 with
        trace ids from 1: they are moved past the store's ids as they are inserted. ``run`` has
        name, source, model and settings. ``memory_limit`` caps DuckDB's memory for the
        transaction; the engine is the process's own and nothing else sets its limit, so it is
        reset to the default after (setting back the rounded text DuckDB shows, '18.8 GiB',
        lowered the limit by a step at every import).
        A run with the same content hash, found in the transaction or by the store's unique
        index on hashes, raises DuplicateContentError and nothing is stored."""
        try:
            with self.connect() as con:
                if memory_limit is not None:
                    con.execute(f"SET memory_limit = '{memory_limit}'")
                try:
                    con.execute("BEGIN")
                    if content_hash is not None:
                        dup = con.execute("SELECT * FROM runs WHERE content_hash = ?", [content_hash]).df()
                        if not dup.empty:
                            raise DuplicateContentError(content_hash, dup.iloc[0])
                    off = con.execute("SELECT coalesce(max(trace_id), 0) FROM traces").fetchone()[0]
                    new_run = _insert_run(con, run["name"], run["source"], run["model"], run["settings"],
                                          "complete", content_hash, n_traces=n_traces, n_tokens=n_tokens)
                    moved = {"trace_id": f"trace_id + {int(off)}", "run_id": str(int(new_run))}
                    for table, rows in tables:
                        insert_tables(con, {table: rows}, replace=moved)
                    con.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        con.execute("ROLLBACK")
                    raise
                finally:
                    if memory_limit is not None:
                        con.execute("RESET memory_limit")
        except duckdb.ConstraintException:
            dup = self.find_run_by_hash(content_hash) if content_hash else None
            if dup is None or dup.empty:
                raise
            raise DuplicateContentError(content_hash, dup.iloc[0]) from None
        return new_run

    def finish_run(self, run_id: int, status: str = "complete") -> None:
        """Set a run's status and refresh its counts."""
        with self.connect() as con:
            _finish(con, run_id, status)

    def delete_run(self, run_id: int) -> None:
        """Remove a run and everything in it, in one transaction: its traces, their branch
        links and finished branch positions (the positions its rollouts were branched at, for a run
        of rollouts), and the run of rollouts branched from it."""
        with self.connect() as con:
            con.execute("BEGIN")
            children = [r[0] for r in con.execute(
                "SELECT run_id FROM runs WHERE source = 'branch' "
                "AND TRY_CAST(json_extract(settings, '$.parent_run') AS INTEGER) = ?", [run_id]).fetchall()]
            for rid in [int(run_id), *children]:
                traces = "(SELECT trace_id FROM traces WHERE run_id = ?)"
                con.execute(  # positions whose rollouts go are no longer finished
                    "DELETE FROM branch_positions p WHERE EXISTS (SELECT 1 FROM branch_rollouts l "
                    f"WHERE l.parent_trace_id = p.parent_trace_id AND l.pos = p.pos AND l.trace_id IN {traces})",
                    [rid])
                for table in ("token_layers", "tokens", "trace_stats", "branch_rollouts"):
                    con.execute(f"DELETE FROM {table} WHERE trace_id IN {traces}", [rid])
                for table in ("branch_rollouts", "branch_positions"):
                    con.execute(f"DELETE FROM {table} WHERE parent_trace_id IN {traces}", [rid])
                con.execute("DELETE FROM traces WHERE run_id = ?", [rid])
                con.execute("DELETE FROM vocab WHERE run_id = ?", [rid])
                con.execute("DELETE FROM runs WHERE run_id = ?", [rid])
            con.execute("COMMIT")

    def add_traces(self, run_id: int, traces: list[Trace], vocab: dict[int, str] | None = None) -> list[int]:
        """Write a batch of traces to a run in one transaction; return their trace ids.

        ``vocab`` maps the token ids used in ``topk_ids`` to their text (local models).
        Alternatives given only as text get run-local ids (>= 2**30) and vocab rows.
        """
        return self.add_batches(run_id, [traces], vocab) if traces else []

    def add_batches(self, run_id: int, batches: Iterable[list[Trace]], vocab: dict[int, str] | None = None,
                    *, con: duckdb.DuckDBPyConnection | None = None,
                    on_batch: Callable[[list[int]], None] | None = None) -> list[int]:
        """Write a stream of trace batches to a run, one transaction per batch; return the ids.

        For bulk writes: the file stays attached for the whole stream, and the Arrow tables of
        the next batch are built while a second thread has DuckDB write the previous one (numpy
        and DuckDB both release the GIL for most of their work), so the write costs about the
        larger of the two instead of their sum. ``on_batch`` gets each batch's trace ids once it
        is committed. When building a batch fails or the
        stream is interrupted, the batches built before it are still committed (and stay).
        """
        run_id = int(run_id)
        if con is None:
            with self.connect() as own:
                return self.add_batches(run_id, batches, vocab, con=own, on_batch=on_batch)
        nxt = NextIds.read(con, run_id, vocab)
        out: list[int] = []

        def write(batch: Batch) -> list[int]:
            con.execute("BEGIN")
            try:
                insert_tables(con, batch.tables)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return batch.trace_ids

        def done(ids: list[int]) -> None:
            out.extend(ids)
            if on_batch:
                on_batch(ids)

        inflight: deque = deque()  # futures of batches handed to the writer, oldest first
        with ThreadPoolExecutor(1, thread_name_prefix="thinkscope-store") as pool:
            try:
                for traces in batches:
                    if not traces:
                        continue
                    batch = nxt.build(traces, run_id, vocab)
                    while len(inflight) >= WRITE_AHEAD:
                        done(inflight.popleft().result())
                    inflight.append(pool.submit(write, batch))
                while inflight:
                    done(inflight.popleft().result())
            finally:  # on an error, the batches already built are still written (and reported)
                concurrent.futures.wait(inflight)
                for f in inflight:
                    if f.exception() is None:
                        done(f.result())
        return out

    # ------------------------------------------------------------------ queries
    def runs(self) -> pd.DataFrame:
        """Every run with its counts and mean sequence entropy (nats, best estimator).

        A 'running' run whose writer process is gone (killed) is shown as 'interrupted'; its
        counts are those of the batches it stored."""
        df = self.query("""
            SELECT r.run_id, r.name, r.source, r.model, r.status, r.created_at,
                   count(t.trace_id) AS n_traces, coalesce(sum(t.n_tokens), 0) AS n_tokens,
                   avg(s.mean_entropy) AS mean_entropy, any_value(t.estimator) AS estimator,
                   r.settings, r.writer
            FROM runs r
            LEFT JOIN traces t USING (run_id)
            LEFT JOIN trace_stats s ON s.trace_id = t.trace_id AND s.phase = 'all'
                                   AND s.estimator = t.estimator
            GROUP BY ALL ORDER BY r.run_id""")
        gone = (df["status"] == "running") & df["writer"].map(writer_gone).astype(bool)
        df.loc[gone, "status"] = "interrupted"
        return df.drop(columns=["writer"])

    def traces(self, run_id: int, with_completion: bool = False) -> pd.DataFrame:
        """The traces of a run with their sequence entropies by phase (best estimator).

        The completion text (its tokens joined) is left out unless asked for: at 1,000 traces
        of 1,000 tokens it is most of the query's time, and a page that shows one trace reads
        its tokens.
        """
        text = ("LEFT JOIN completions($1) c ON c.trace_id = t.trace_id" if with_completion else "")
        cols = "t.*, coalesce(c.completion, '') AS completion" if with_completion else "t.*"
        # Aggregate the stats before the join, so that no GROUP BY hashes the trace text.
        return self.query(f"""
            WITH s AS (
                SELECT trace_id, estimator,
                       max(mean_entropy) FILTER (WHERE phase = 'all') AS mean_entropy,
                       max(mean_entropy) FILTER (WHERE phase = 'thinking') AS mean_entropy_thinking,
                       max(mean_entropy) FILTER (WHERE phase = 'answer') AS mean_entropy_answer
                FROM trace_stats WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = $1)
                GROUP BY trace_id, estimator)
            SELECT {cols}, s.mean_entropy, s.mean_entropy_thinking, s.mean_entropy_answer
            FROM traces t LEFT JOIN s ON s.trace_id = t.trace_id AND s.estimator = t.estimator
            {text}
            WHERE t.run_id = $1 ORDER BY t.idx""", [run_id])

    def trace(self, trace_id: int) -> pd.Series:
        df = self.query("SELECT * FROM traces WHERE trace_id = ?", [trace_id])
        if df.empty:
            raise StoreError(f"{self.path}: no trace with id {trace_id}")
        return df.iloc[0]

    def tokens(self, trace_id: int, with_alternatives: bool = True) -> pd.DataFrame:
        """One row per token of a trace; with the top-k alternatives' text and logprobs."""
        with self.connect(write=False) as con:
            df = con.execute("SELECT * FROM tokens WHERE trace_id = ? ORDER BY pos", [trace_id]).df()
            if not with_alternatives or df.empty:
                return df
            # The alternatives' text, mapped with numpy rather than one dict lookup per
            # alternative (20 per token): this is most of the explorer's wait otherwise.
            col = df["topk_ids"].tolist()
            rows = [ids if isinstance(ids, np.ndarray) else np.empty(0, np.int32) for ids in col]
            lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
            flat = np.concatenate(rows).astype(np.int64) if lengths.sum() else np.empty(0, np.int64)
            uniq = np.unique(flat)
            voc = con.execute("""
                SELECT token_id, text FROM vocab
                WHERE run_id = (SELECT run_id FROM traces WHERE trace_id = ?)
                  AND token_id IN (SELECT unnest(?::INTEGER[]))
                ORDER BY token_id""", [trace_id, uniq.tolist()]).fetchnumpy()
        known = np.asarray(voc["token_id"], np.int64)
        texts = _filled(voc["text"], None).astype(object)
        at = np.searchsorted(known, flat)
        hit = at < known.size
        hit[hit] = known[at[hit]] == flat[hit]
        flat_text = np.empty(flat.size, dtype=object)
        flat_text[hit] = texts[at[hit]]
        for j in np.flatnonzero(~hit):
            flat_text[j] = f"<id {int(flat[j])}>"
        cells = flat_text.tolist()
        ends = np.cumsum(lengths).tolist()
        starts = [0, *ends[:-1]]
        df["topk_tokens"] = [cells[a:b] for a, b in zip(starts, ends)]
        return df

    def entropy_column(self, estimator: str) -> str:
        if estimator == "best":
            return "entropy"
        try:
            return ENTROPY_COLUMNS[estimator]
        except KeyError:
            raise StoreError(f"unknown estimator {estimator!r}; known: best, {', '.join(ENTROPY_COLUMNS)}")

    def run_window_entropy(self, run_id: int, estimator: str = "best", w: int = 4) -> np.ndarray:
        """Window entropy (nats) of every token of a run, ordered by trace_id then pos.

        Computed by ``metrics.window_entropy`` itself (the one definition) over the run's
        traces laid end to end with ``w`` NaNs between them: NaNs are ignored inside a window,
        so no window reaches into the next trace and each trace's last token gets NaN. (A SQL
        window function gave the same values but cost ~4x more at 1M tokens: it sorts.)
        """
        col = self.entropy_column(estimator)
        w = int(w)
        if w < 1:
            raise ValueError(f"window size must be >= 1, got {w}")
        with self.connect(write=False) as con:
            tr = con.execute("SELECT trace_id, n_tokens FROM traces WHERE run_id = ? ORDER BY trace_id",
                             [run_id]).fetchnumpy()
            if not len(tr["trace_id"]):
                return np.empty(0)
            # relation API straight to Arrow: about half the cost of fetchnumpy at 1M rows
            tok = con.sql(f"""
                SELECT trace_id, pos, {col} AS h FROM tokens
                WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = ?)""",
                params=[run_id]).to_arrow_table()
        tids = np.asarray(tr["trace_id"], np.int64)
        lengths = np.asarray(tr["n_tokens"], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths + w)[:-1]])  # in the padded layout
        lookup = np.zeros(int(tids.max() - tids.min()) + 1, np.int64)
        lookup[tids - tids.min()] = starts
        at = (lookup[tok.column("trace_id").to_numpy() - tids.min()]
              + tok.column("pos").to_numpy().astype(np.int64))
        padded = np.full(int((lengths + w).sum()), np.nan)
        padded[at] = tok.column("h").to_numpy()  # NULL -> NaN
        # Chunks of whole traces of ~64k values keep the temporaries in cache (2x faster).
        first = np.searchsorted(starts, np.arange(1 << 16, padded.size, 1 << 16))
        cuts = np.unique(np.concatenate([[0], starts[first[first < starts.size]], [padded.size]]))
        win = np.concatenate([metrics.window_entropy(padded[a:b], w).values
                              for a, b in zip(cuts[:-1], cuts[1:])])
        keep = np.ones(padded.size, bool)
        keep[((starts + lengths)[:, None] + np.arange(w)).ravel()] = False
        return win[keep]

    def trace_stats(self, run_ids: Iterable[int] | None = None) -> pd.DataFrame:
        """Sequence entropy per trace, estimator and phase, with the trace's metadata."""
        where, params = "", []
        if run_ids is not None:
            ids = [int(r) for r in run_ids]
            where = f"WHERE t.run_id IN ({', '.join('?' * len(ids))})" if ids else "WHERE false"
            params = ids
        return self.query(f"""
            SELECT s.*, t.run_id, t.n_tokens, t.boundary, t.problem_id, t.level, t.correct,
                   t.sample_idx
            FROM trace_stats s JOIN traces t USING (trace_id) {where}""", params)

    def set_grades(self, run_id: int, grades: pd.DataFrame, rule: dict | None = None) -> None:
        """Overwrite pred_answer and correct of a run's traces (re-grading), in one transaction.

        ``grades`` has columns trace_id, pred_answer, correct (None: ungraded); ``rule`` is
        recorded in the run's settings under 'grading'.
        """
        g = grades[["trace_id", "pred_answer", "correct"]].copy()
        g["trace_id"] = g["trace_id"].astype("int64")
        g["pred_answer"] = g["pred_answer"].astype(object).where(g["pred_answer"].notna(), None)
        g["correct"] = g["correct"].astype("boolean")
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                con.register("_grades", g)
                con.execute("""UPDATE traces SET pred_answer = _grades.pred_answer::VARCHAR,
                                                 correct = _grades.correct::BOOLEAN
                               FROM _grades WHERE traces.trace_id = _grades.trace_id
                                 AND traces.run_id = ?""", [run_id])
                con.unregister("_grades")
                if rule is not None:
                    self.merge_settings(run_id, {"grading": rule}, con=con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def merge_settings(self, run_id: int, patch: dict, con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Merge ``patch`` into a run's settings JSON (grading rule, pass rates, early-stop results)."""
        sql = "UPDATE runs SET settings = json_merge_patch(coalesce(settings, '{}'), ?) WHERE run_id = ?"
        params = [json_text(patch), run_id]
        if con is not None:
            con.execute(sql, params)
            return
        with self.connect() as own:
            own.execute(sql, params)

    def run(self, run_id: int) -> pd.Series:
        """A run's row (name, source, model, settings as JSON text, status, ...)."""
        df = self.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
        if df.empty:
            raise StoreError(f"{self.path}: no run with id {run_id}")
        return df.iloc[0]

    def trace_run(self, trace_id: int) -> int | None:
        """The run a trace belongs to; None when no trace has that id."""
        df = self.query("SELECT run_id FROM traces WHERE trace_id = ?", [trace_id])
        return None if df.empty else int(df["run_id"].iloc[0])

    def graded_counts(self) -> dict[int, int]:
        """run_id -> number of its traces graded correct or wrong (runs with traces only)."""
        df = self.query("SELECT run_id, count(correct) AS n FROM traces GROUP BY run_id")
        return {int(r): int(n) for r, n in zip(df["run_id"], df["n"])}

    def best_trace_stats(self) -> pd.DataFrame:
        """Sequence entropy (nats, phase 'all', each trace's best estimator) of every trace:
        run_id, trace_id, estimator, mean_entropy."""
        return self.query("""
            SELECT t.run_id, t.trace_id, s.estimator, s.mean_entropy
            FROM traces t JOIN trace_stats s ON s.trace_id = t.trace_id
                 AND s.estimator = t.estimator AND s.phase = 'all'""")

    def completions(self, run_id: int) -> pd.DataFrame:
        """A run's traces with their completion text ('' without tokens), answers and grade,
        ordered by trace_id: trace_id, n_tokens, correct, completion, pred_answer, gold_answer."""
        return self.query("SELECT trace_id, n_tokens, correct, coalesce(c.completion, '') AS completion, "
                          "pred_answer, gold_answer FROM traces LEFT JOIN completions($1) c USING (trace_id) "
                          "WHERE run_id = $1 ORDER BY trace_id", [int(run_id)])

    def run_token_entropies(self, run_id: int, estimator: str = "best") -> pd.DataFrame:
        """Every token of a run ordered by trace_id then pos: trace_id, h (entropy in nats by
        ``estimator``, NaN where not stored), len (characters of the token's text)."""
        col = self.entropy_column(estimator)
        return self.query(f"""
            SELECT k.trace_id, k.{col} AS h, length(coalesce(k.token, '')) AS len
            FROM tokens k JOIN traces t USING (trace_id) WHERE t.run_id = ?
            ORDER BY k.trace_id, k.pos""", [int(run_id)])

    def prompts(self, trace_ids: list[int]) -> pd.DataFrame:
        """trace_id, prompt and gold_answer of the given traces."""
        ids = [int(t) for t in trace_ids]
        return self.query(f"SELECT trace_id, prompt, gold_answer FROM traces WHERE trace_id IN ({_marks(ids)})",
                          ids)

    def token_ids(self, trace_ids: list[int]) -> pd.DataFrame:
        """trace_id, pos and token_id of every token of the given traces, in order."""
        ids = [int(t) for t in trace_ids]
        return self.query(f"SELECT trace_id, pos, token_id FROM tokens WHERE trace_id IN ({_marks(ids)}) "
                          "ORDER BY trace_id, pos", ids)

    # ------------------------------------------------------------------ a whole run, row by row
    def run_token_rows(self, run_id: int) -> pd.DataFrame:
        """One row per token of a run, ordered by trace index then position: the trace's
        fields (``RUN_TRACE_FIELDS``, trace_idx being its index in the run) repeated, then
        pos, token_id, token, logprob, the entropy columns (nats), topk_ids, topk_logprobs."""
        return self.query(f"""
            SELECT {_TRACE_COLS}, k.pos, k.token_id, k.token, k.logprob,
                   {", ".join(f"k.{c}" for c in ENTROPY_COLUMNS.values())},
                   k.topk_ids, k.topk_logprobs
            FROM traces t JOIN tokens k USING (trace_id)
            WHERE t.run_id = ? ORDER BY t.idx, k.pos""", [run_id])

    def run_empty_traces(self, run_id: int) -> pd.DataFrame:
        """The fields (``RUN_TRACE_FIELDS``) of a run's traces that have no tokens."""
        return self.query(f"SELECT {_TRACE_COLS} FROM traces t WHERE t.run_id = ? AND t.n_tokens = 0", [run_id])

    def run_vocab(self, run_id: int) -> dict[int, str]:
        """token id -> text of a run's vocabulary rows."""
        return dict(self.query("SELECT token_id, text FROM vocab WHERE run_id = ?", [run_id])
                    .itertuples(index=False, name=None))

    def run_layer_rows(self, run_id: int) -> pd.DataFrame:
        """A run's per-layer records: trace_idx, pos and the ``LAYER_FIELDS`` lists, unordered."""
        return self.query(f"""
            SELECT t.idx AS trace_idx, l.pos, {", ".join(f"l.{c}" for c in LAYER_FIELDS)}
            FROM token_layers l JOIN traces t USING (trace_id) WHERE t.run_id = ?""", [run_id])

    def find_run_by_hash(self, content_hash: str) -> pd.DataFrame:
        return self.query("SELECT * FROM runs WHERE content_hash = ?", [content_hash])

    def counts(self) -> dict[str, int]:
        with self.connect(write=False) as con:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("runs", "traces", "tokens")}

    # ------------------------------------------------------------------ per-layer records
    def token_layers(self, trace_id: int) -> pd.DataFrame:
        """Per-layer arrays of a trace, one row per token (analysis.layers).

        Columns: pos, lens_entropy, lens_top1, attn_entropy, attn_entropy_norm,
        attn_head_entropy (lists; nats), lens_top1_text (text of each layer's top-1 token).
        Which layers the lists cover is in the trace's metadata (``layer_info``, see
        :meth:`layer_info`). Empty when the trace has no layer records.
        """
        with self.connect(write=False) as con:
            df = con.execute("SELECT * EXCLUDE (trace_id) FROM token_layers WHERE trace_id = ? ORDER BY pos",
                             [trace_id]).df()
            if df.empty or df["lens_top1"].isna().all():
                return df
            voc = dict(con.execute("""
                SELECT token_id, text FROM vocab
                WHERE run_id = (SELECT run_id FROM traces WHERE trace_id = ?)
                  AND token_id IN (SELECT DISTINCT unnest(lens_top1) FROM token_layers WHERE trace_id = ?)
                """, [trace_id, trace_id]).fetchall())
        df["lens_top1_text"] = [[voc.get(int(i), f"<id {int(i)}>") for i in ids] if ids is not None else []
                                for ids in df["lens_top1"]]
        return df

    def layer_info(self, trace_id: int) -> dict:
        """Which layers a trace's per-layer arrays cover: lens_layers, attn_layers, head_layer."""
        meta = json_settings(self.trace(trace_id).get("metadata"))
        return meta.get("layer_info", {})

    def layer_runs(self) -> pd.DataFrame:
        """run_id and number of traces with per-layer records, for runs that have any."""
        return self.query("""
            SELECT t.run_id, count(DISTINCT l.trace_id) AS n_traces
            FROM token_layers l JOIN traces t USING (trace_id) GROUP BY t.run_id ORDER BY t.run_id""")

    def layer_trace_ids(self, run_id: int) -> list[int]:
        """Ids of a run's traces that have per-layer records."""
        df = self.query("""SELECT DISTINCT l.trace_id FROM token_layers l JOIN traces t USING (trace_id)
                           WHERE t.run_id = ? ORDER BY l.trace_id""", [run_id])
        return [int(i) for i in df["trace_id"]]

    def layer_profiles(self, run_id: int, field: str = "lens_entropy") -> pd.DataFrame:
        """Entropy profile of every trace of a run with layer records: mean over its tokens.

        One row per (trace, list index ``k`` 0-based): mean and standard deviation of
        ``field`` (nats; NaN values left out), token count, and the trace's problem_id,
        level and correct, so profiles can be compared by difficulty and correctness.
        ``field``: lens_entropy, attn_entropy, attn_entropy_norm or attn_head_entropy.
        """
        if field not in LAYER_FIELDS or field == "lens_top1":
            raise StoreError(f"no entropy field {field!r} in token_layers; known: "
                             + ", ".join(f for f in LAYER_FIELDS if f != "lens_top1"))
        return self.query(f"""
            WITH v AS (
                SELECT l.trace_id, generate_subscripts(l.{field}, 1) - 1 AS k, unnest(l.{field}) AS h
                FROM token_layers l JOIN traces t USING (trace_id) WHERE t.run_id = ?)
            SELECT v.trace_id, v.k, avg(h) FILTER (WHERE NOT isnan(h)) AS mean,
                   stddev_samp(h) FILTER (WHERE NOT isnan(h)) AS sd,
                   count(h) FILTER (WHERE NOT isnan(h)) AS n,
                   t.idx, t.problem_id, t.level, t.correct
            FROM v JOIN traces t USING (trace_id)
            GROUP BY ALL ORDER BY v.trace_id, v.k""", [run_id])
