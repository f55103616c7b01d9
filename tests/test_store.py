"""The DuckDB store: schema and version check, round trips, transactions, window entropy,
and two real processes sharing one file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest

from analysis import metrics
from analysis.store import batch as store_mod
from analysis.store import (LOCAL_ID_BASE, RUN_TRACE_FIELDS, SCHEMA, SCHEMA_VERSION, DuplicateContentError, Store,
                            StoreError)
from analysis.trace import Trace

ROOT = Path(__file__).resolve().parent.parent


def make_trace(n: int, k: int = 5, seed: int = 0, nan_every: int = 0, text_alts: bool = False,
               vocab_size: int = 300, marker_at: int | None = None, **meta) -> Trace:
    """A trace with the shape the recorder produces (or, with ``text_alts``, an API dump
    whose alternatives are known only by their text)."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.choice(vocab_size, size=k, replace=False) for _ in range(n)]) if n else \
        np.empty((0, k), np.int64)
    lp = np.sort(-rng.exponential(1.5, size=(n, k)), axis=1)[:, ::-1] - 0.01
    h = rng.gamma(1.5, 0.7, size=n)
    if nan_every:
        h[::nan_every] = np.nan
    tokens = [f"\u0120w{int(i)}" for i in ids[:, 0]] if n else []
    if marker_at is not None and marker_at < n:
        tokens[marker_at] = "</think>"
    common = dict(prompt=f"prompt {seed}", tokens=tokens, logprobs=lp[:, 0].copy() if n else np.empty(0),
                  topk_logprobs=lp, entropy_full=h, entropy_full_t1=h * 1.25, metadata=dict(meta))
    if text_alts:
        return Trace(topk_tokens=[[f"alt{int(i)}" for i in row] for row in ids], **common)
    return Trace(token_ids=ids[:, 0] if n else np.empty(0, np.int64), topk_ids=ids, **common)


def vocab_for(traces, missing: set[int] = frozenset()) -> dict[int, str]:
    ids = set()
    for t in traces:
        ids.update(np.unique(t.topk_ids).tolist())
    return {i: f"\u0120w{i}" for i in ids if i not in missing}


def file_digest(path: Path) -> str:
    h = hashlib.sha256(path.read_bytes())
    wal = Path(str(path) + ".wal")
    if wal.exists():
        h.update(wal.read_bytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- schema


def test_a_new_store_gets_the_schema_and_its_version(store):
    assert store.counts() == {"runs": 0, "traces": 0, "tokens": 0}
    assert store.query("SELECT value FROM meta WHERE key = 'schema_version'")["value"].tolist() == [
        str(SCHEMA_VERSION)]
    tables = set(store.query("SELECT table_name FROM information_schema.tables "
                             "WHERE table_catalog = current_database()")["table_name"])
    assert {"meta", "runs", "traces", "trace_stats", "tokens", "vocab", "token_layers"} <= tables
    # a second Store on the same file accepts it as it is
    assert Store(store.path).counts() == {"runs": 0, "traces": 0, "tokens": 0}


def test_a_store_from_a_newer_schema_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "newer.duckdb"
    s = Store(path)
    run = s.create_run("kept", "test")
    s.add_traces(run, [make_trace(12)], vocab_for([make_trace(12)]))
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    before = file_digest(path)
    for attempt in (lambda st: st.runs(), lambda st: st.add_traces(run, [make_trace(3)])):
        with pytest.raises(StoreError) as err:
            attempt(Store(path))
        msg = str(err.value)
        assert str(path) in msg and f"version {SCHEMA_VERSION + 1}" in msg and "newer" in msg
        assert "\n" not in msg
    assert file_digest(path) == before


def test_a_duckdb_file_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE measurements (x INTEGER)")
    con.execute("INSERT INTO measurements VALUES (1), (2)")
    con.close()
    before = file_digest(path)
    with pytest.raises(StoreError, match="not a thinkscope store") as err:
        Store(path).runs()
    assert str(path) in str(err.value)
    assert file_digest(path) == before


def test_a_file_that_is_not_duckdb_is_refused(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("just some text, not a database\n" * 200)
    with pytest.raises(StoreError, match="cannot open the store") as err:
        Store(path).runs()
    assert str(path) in str(err.value)
    assert path.read_text().startswith("just some text")


# --------------------------------------------------------------------------- round trips


def test_traces_round_trip_with_alternatives_and_vocab_text(store):
    traces = [make_trace(40, k=5, seed=1, marker_at=25, problem_id="p1", level=3.0, correct=True,
                         sample_idx=2, note="kept in metadata"),
              make_trace(7, k=5, seed=2)]
    missing = {int(traces[1].topk_ids[0, 4])}  # one alternative without vocab text
    missing -= set(traces[0].topk_ids.ravel().tolist())
    run = store.create_run("rt", "test", "tiny", {"temperature": 0.7})
    ids = store.add_traces(run, traces, vocab_for(traces, missing))
    store.finish_run(run)
    assert len(ids) == 2

    runs = store.runs()
    row = runs.set_index("run_id").loc[run]
    assert (row["name"], row["source"], row["model"], row["status"]) == ("rt", "test", "tiny", "complete")
    assert (row["n_traces"], row["n_tokens"]) == (2, 47)
    assert json.loads(row["settings"]) == {"temperature": 0.7}

    tr = store.traces(run, with_completion=True).set_index("trace_id")
    assert "completion" not in store.traces(run).columns
    first = tr.loc[ids[0]]
    assert first["completion"] == traces[0].completion and first["prompt"] == "prompt 1"
    assert (first["n_tokens"], first["boundary"], first["estimator"], first["k"]) == (40, 26, "full", 5)
    assert (first["problem_id"], first["level"], bool(first["correct"]), first["sample_idx"]) == ("p1", 3.0, True, 2)
    assert json.loads(first["metadata"]) == {"note": "kept in metadata"}
    h = traces[0].entropy_full
    assert first["mean_entropy"] == pytest.approx(metrics.sequence_entropy(h), rel=1e-6)
    assert first["mean_entropy_thinking"] == pytest.approx(metrics.sequence_entropy(h, 26, "thinking"), rel=1e-6)
    assert first["mean_entropy_answer"] == pytest.approx(metrics.sequence_entropy(h, 26, "answer"), rel=1e-6)

    for tid, t in zip(ids, traces):
        tok = store.tokens(tid)
        assert tok["pos"].tolist() == list(range(t.n_tokens))
        assert tok["token"].tolist() == t.tokens
        assert tok["token_id"].tolist() == t.token_ids.tolist()
        np.testing.assert_allclose(tok["logprob"], t.logprobs, rtol=1e-6)
        np.testing.assert_allclose(tok["entropy_full"], t.entropy_full, rtol=1e-6)
        np.testing.assert_allclose(tok["entropy_full_t1"], t.entropy_full_t1, rtol=1e-6)
        np.testing.assert_allclose(tok["entropy"], t.entropy_full, rtol=1e-6)
        topk = metrics.all_topk_entropies(t.topk_logprobs)
        for est in metrics.TOPK_ESTIMATORS:
            np.testing.assert_allclose(tok[f"entropy_{est}"], topk[est], rtol=1e-5)
        for r in range(t.n_tokens):
            assert list(tok["topk_ids"][r]) == t.topk_ids[r].tolist()
            np.testing.assert_allclose(tok["topk_logprobs"][r], t.topk_logprobs[r], rtol=1e-6)
            want = [f"<id {i}>" if i in missing else f"\u0120w{i}" for i in t.topk_ids[r].tolist()]
            assert tok["topk_tokens"][r] == want


def test_text_only_alternatives_get_run_local_ids(store):
    a = make_trace(6, k=3, seed=4, text_alts=True)
    a.topk_tokens[0][2] = None              # a missing alternative ...
    a.topk_logprobs[0, 2] = -9999.0         # ... with the API's "not in the top-k" sentinel
    b = make_trace(5, k=3, seed=4, text_alts=True)  # same texts again, in a second batch
    run = store.create_run("api", "upload:openai")
    ta = store.add_traces(run, [a])[0]
    tb = store.add_traces(run, [b])[0]
    tok_a, tok_b = store.tokens(ta), store.tokens(tb)
    assert len(tok_a["topk_ids"][0]) == 2  # the empty slot is dropped, not stored as a number
    assert tok_a["topk_tokens"][0] == a.topk_tokens[0][:2]
    for r in range(1, 6):
        assert tok_a["topk_tokens"][r] == a.topk_tokens[r]
        assert all(i >= LOCAL_ID_BASE for i in tok_a["topk_ids"][r])
    for r in range(5):
        assert tok_b["topk_tokens"][r] == b.topk_tokens[r]
        # the same text keeps the same local id across batches of a run
        assert list(tok_b["topk_ids"][r]) == list(tok_a["topk_ids"][r]) or r == 0
    voc = store.query("SELECT token_id, text FROM vocab WHERE run_id = ?", [run])
    assert voc["text"].is_unique and (voc["token_id"] >= LOCAL_ID_BASE).all()
    assert store.traces(run)["estimator"].tolist() == ["full", "full"]


def test_nested_operations_share_one_attachment(store):
    run = store.create_run("n", "test")
    with store.connect() as con:
        con.execute("SELECT 1")
        assert store.runs()["run_id"].tolist() == [run]  # an operation inside an operation
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_add_batches_writes_what_add_traces_writes(tmp_path):
    """The bulk path (a stream of batches, built ahead while the previous one is written)
    stores the same rows, ids and vocabulary as one add_traces call per batch."""
    batches = [[make_trace(40, seed=s, marker_at=20), make_trace(7, seed=s + 50)] for s in range(5)]
    batches.insert(2, [])  # an empty batch in the stream is skipped
    batches.append([make_trace(6, k=3, seed=90, text_alts=True), make_trace(4, k=3, seed=90, text_alts=True)])
    vocab = vocab_for([t for b in batches for t in b if t.topk_ids is not None])
    one, bulk = Store(tmp_path / "one.duckdb"), Store(tmp_path / "bulk.duckdb")
    r1, r2 = one.create_run("r", "test"), bulk.create_run("r", "test")
    ids1 = [i for b in batches for i in one.add_traces(r1, b, vocab)]
    seen: list[list[int]] = []
    ids2 = bulk.add_batches(r2, batches, vocab, on_batch=seen.append)
    assert ids1 == ids2 == list(range(1, 13)) and [i for b in seen for i in b] == ids2 and len(seen) == 6
    for table, order in (("traces", "trace_id"), ("tokens", "trace_id, pos"), ("vocab", "token_id"),
                         ("trace_stats", "trace_id, estimator, phase")):
        a = one.query(f"SELECT * FROM {table} ORDER BY {order}")
        b = bulk.query(f"SELECT * FROM {table} ORDER BY {order}")
        assert a.drop(columns=["run_id"], errors="ignore").astype(str).equals(
            b.drop(columns=["run_id"], errors="ignore").astype(str)), table
    assert bulk.traces(r2, with_completion=True)["completion"].tolist() == \
        [t.completion for b in batches for t in b]


def test_add_batches_keeps_the_batches_committed_before_a_failure(store, monkeypatch):
    run = store.create_run("bulk", "test")
    batches = [[make_trace(10, seed=s)] for s in range(4)]
    vocab = vocab_for([t for b in batches for t in b])
    real, calls = store_mod.build_batch, []

    def third_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("bad batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod, "build_batch", third_fails)
    committed: list[list[int]] = []
    with pytest.raises(RuntimeError, match="bad batch"):
        store.add_batches(run, batches, vocab, on_batch=committed.append)
    assert store.counts()["traces"] == 2 and store.counts()["tokens"] == 20
    assert store.traces(run)["trace_id"].tolist() == [1, 2] and committed == [[1], [2]]


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    """Version 1 kept each completion's text in traces; opening it drops the column (the
    text now comes from the tokens) and keeps every row."""
    path = tmp_path / "v1.duckdb"
    v1 = SCHEMA.replace("    prompt VARCHAR,", "    prompt VARCHAR,\n    completion VARCHAR,", 1)
    con = duckdb.connect(str(path))
    con.execute(v1)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO runs (run_id, name, source, created_at, status) VALUES (1, 'old', 'test', now(), 'complete')")
    con.execute("INSERT INTO traces (trace_id, run_id, idx, prompt, completion, n_tokens, boundary, estimator, k) "
                "VALUES (1, 1, 0, 'p', 'Hi there', 2, 2, 'full', 0)")
    con.execute("INSERT INTO tokens (trace_id, pos, token, entropy) VALUES (1, 0, 'Hi', 0.5), (1, 1, ' there', 0.25)")
    con.close()
    store = Store(path)
    tr = store.traces(1, with_completion=True)
    assert tr["completion"].tolist() == ["Hi there"] and tr["prompt"].tolist() == ["p"]
    assert store.query("SELECT value FROM meta WHERE key = 'schema_version'")["value"].tolist() == [
        str(SCHEMA_VERSION)]
    assert "completion" not in store.query("SELECT * FROM traces").columns


# --------------------------------------------------------------------------- transactions


class FailingTables(dict):
    """Batch tables that fail after the first inserts went in."""

    def __init__(self, tables, exc):
        super().__init__(tables)
        self.exc = exc

    def items(self):
        yield from list(super().items())[:2]
        raise self.exc


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_an_exception_mid_batch_leaves_nothing(store, monkeypatch, exc_type):
    exc = exc_type("interrupted mid-batch")  # made here: a module-level one would keep its traceback
    run = store.create_run("tx", "test")
    good = [make_trace(10, seed=7)]
    store.add_traces(run, good, vocab_for(good))
    before = {**store.counts(), "vocab": len(store.query("SELECT * FROM vocab")),
              "stats": len(store.query("SELECT * FROM trace_stats"))}
    real = store_mod.build_batch

    def failing(*args, **kwargs):
        batch = real(*args, **kwargs)
        batch.tables = FailingTables(batch.tables, exc)
        return batch

    monkeypatch.setattr(store_mod, "build_batch", failing)
    batch = [make_trace(20, seed=8), make_trace(5, seed=9)]
    with pytest.raises(exc_type):
        store.add_traces(run, batch, vocab_for(batch))
    exc.__traceback__ = None
    after = {**store.counts(), "vocab": len(store.query("SELECT * FROM vocab")),
             "stats": len(store.query("SELECT * FROM trace_stats"))}
    assert after == before
    monkeypatch.setattr(store_mod, "build_batch", real)
    store.add_traces(run, batch, vocab_for(batch))  # the store is still usable
    assert store.counts()["traces"] == 3


def test_delete_run_removes_everything_of_that_run_only(store):
    keep, drop = store.create_run("keep", "test"), store.create_run("drop", "test")
    tk = [make_trace(8, seed=1)]
    td = [make_trace(9, seed=2), make_trace(4, seed=3, text_alts=True)]
    store.add_traces(keep, tk, vocab_for(tk))
    store.add_traces(drop, td, vocab_for(td[:1]))
    store.delete_run(drop)
    assert store.runs()["run_id"].tolist() == [keep]
    assert store.counts() == {"runs": 1, "traces": 1, "tokens": 8}
    for table in ("trace_stats", "tokens", "token_layers"):
        orphans = store.query(f"SELECT count(*) AS n FROM {table} WHERE trace_id NOT IN "
                              "(SELECT trace_id FROM traces)")["n"].item()
        assert orphans == 0, table
    assert set(store.query("SELECT DISTINCT run_id FROM vocab")["run_id"]) == {keep}


def test_the_verbs_of_export_grading_early_stopping_and_the_pages_read_what_was_written(store):
    graded = [make_trace(6, seed=1, correct=True, gold_answer="7"), make_trace(5, seed=2, correct=False),
              make_trace(0, seed=3)]
    first = store.create_run("graded", "test", settings={"temperature": 0.7})
    ids = store.add_traces(first, graded, vocab_for(graded[:2]))
    other = store.create_run("ungraded", "test")
    [lone] = store.add_traces(other, [make_trace(3, seed=4)], vocab_for([make_trace(3, seed=4)]))
    assert store.run(first)["name"] == "graded"
    with pytest.raises(StoreError, match="no run with id 99"):
        store.run(99)
    assert store.run_settings(first) == {"temperature": 0.7} and store.run_settings(99) is None
    assert (store.trace_run(ids[1]), store.trace_run(lone), store.trace_run(10**9)) == (first, other, None)
    assert store.graded_counts() == {first: 2, other: 0}

    done = store.completions(first)
    assert done["trace_id"].tolist() == ids
    assert done["completion"].tolist() == ["".join(t.tokens) for t in graded]
    assert done["correct"].tolist()[:2] == [True, False] and done["gold_answer"].iloc[0] == "7"
    ent = store.run_token_entropies(first, "full")
    np.testing.assert_allclose(ent["h"], np.concatenate([t.entropy_full for t in graded[:2]]), rtol=1e-6)
    assert ent["len"].tolist() == [len(x) for t in graded for x in t.tokens]
    assert sorted(store.prompts([ids[1], ids[0]])["prompt"]) == ["prompt 1", "prompt 2"]
    tok = store.token_ids([ids[0]])
    assert tok["pos"].tolist() == list(range(6)) and tok["token_id"].tolist() == graded[0].token_ids.tolist()

    rows = store.run_token_rows(first)
    assert len(rows) == 11 and list(rows.columns[:len(RUN_TRACE_FIELDS)]) == list(RUN_TRACE_FIELDS)
    assert rows["trace_idx"].tolist() == [0] * 6 + [1] * 5 and rows["pos"].tolist() == [*range(6), *range(5)]
    assert store.run_empty_traces(first)["trace_idx"].tolist() == [2]
    assert store.run_vocab(first) == vocab_for(graded[:2])
    assert store.run_layer_rows(first).empty
    best = store.best_trace_stats()
    assert set(best["trace_id"]) >= {*ids[:2], lone}
    assert (best.merge(store.traces(first), on="trace_id")["estimator_x"] == "full").all()


def test_importing_a_staged_run_with_a_stored_hash_is_refused_and_stores_nothing(store):
    run = store.create_run("imported", "upload:x", content_hash="ab" * 32, status="complete")
    before = store.counts()
    limit = store.query("SELECT current_setting('memory_limit') AS m")["m"].item()
    with pytest.raises(DuplicateContentError) as e:
        store.import_staged(iter([]), {"name": "again", "source": "upload:x", "model": None, "settings": {}},
                            "ab" * 32, 0, 0, memory_limit="64MB")
    assert int(e.value.run["run_id"]) == run
    assert store.counts() == before
    assert store.query("SELECT current_setting('memory_limit') AS m")["m"].item() == limit  # restored


# --------------------------------------------------------------------------- one definition


@pytest.mark.parametrize("w", [1, 4, 7])
def test_run_window_entropy_is_metrics_window_entropy_per_trace(store, w):
    """The store's run-wide window entropy is the metric's, trace by trace: windows stop at
    each trace's end, NaN entropies are skipped, the last token has none."""
    lengths = [0, 1, 3, 4, 5, 30, 2, 17]
    traces = [make_trace(n, seed=i, nan_every=(3 if i % 2 else 0)) for i, n in enumerate(lengths)]
    traces[6].entropy_full[:] = np.nan  # a trace with no entropy at all
    run = store.create_run("win", "test")
    other = store.create_run("other", "test")  # interleaved trace ids of another run
    for i, t in enumerate(traces):
        store.add_traces(run, [t])
        store.add_traces(other, [make_trace(6, seed=100 + i)])
    got = store.run_window_entropy(run, "best", w)
    # the metric over each trace's stored (float32) entropies
    stored = [store.tokens(tid, with_alternatives=False)["entropy"].to_numpy(np.float64, na_value=np.nan)
              for tid in store.traces(run)["trace_id"]]
    want = np.concatenate([metrics.window_entropy(h, w).values for h in stored])
    assert got.shape == (sum(lengths),)
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    assert np.isnan(got).any() and np.isfinite(got).any()
    t1 = store.run_window_entropy(run, "full_t1", w)
    np.testing.assert_allclose(t1[np.isfinite(got)], got[np.isfinite(got)] * 1.25, rtol=1e-5)
    assert store.run_window_entropy(store.create_run("empty", "test"), "best", w).shape == (0,)
    with pytest.raises(StoreError, match="unknown estimator"):
        store.run_window_entropy(run, "nope", w)


# --------------------------------------------------------------------------- two processes

WRITER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from tests.test_store import make_trace, vocab_for
    from analysis.store import Store
    store = Store(sys.argv[1], lock_timeout=30)
    ready = sys.argv[4]
    while not os.path.exists(ready):  # start once the reader is reading
        time.sleep(0.05)
    run = store.create_run("writer", "test")
    deadline = time.monotonic() + float(sys.argv[2])
    batches = 0
    while time.monotonic() < deadline or batches < 4:
        traces = [make_trace(200, k=20, seed=batches * 10 + j) for j in range(4)]
        store.add_traces(run, traces, vocab_for(traces))
        batches += 1
        time.sleep(0.05)  # a recorder generates between batches
    store.finish_run(run)
    print(json.dumps({"run": run, "batches": batches}))
""")

READER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[3])
    from analysis.store import Store
    store = Store(sys.argv[1], lock_timeout=30)
    done, ready = sys.argv[2], sys.argv[4]
    seen, reads = [], 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        finished = os.path.exists(done)
        runs = store.runs()
        n = int(runs["n_tokens"].sum()) if len(runs) else 0
        if not seen or n != seen[-1]:
            seen.append(n)
        if n:
            last = int(store.query("SELECT max(trace_id) AS t FROM traces")["t"].item())
            assert len(store.tokens(last)) == 200
        reads += 1
        open(ready, "w").close()
        if finished:
            break
    print(json.dumps({"seen": seen, "reads": reads}))
""")


def test_a_writer_and_a_reader_process_share_the_store_without_lock_errors(tmp_path):
    path = tmp_path / "shared.duckdb"
    Store(path).counts()  # the schema exists before both start
    done, ready = tmp_path / "writer.done", tmp_path / "reader.ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path), str(done), str(ROOT), str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "3", str(ROOT), str(ready)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    w_out, w_err = writer.communicate(timeout=300)
    done.touch()
    r_out, r_err = reader.communicate(timeout=300)
    assert writer.returncode == 0, w_err
    assert reader.returncode == 0, r_err
    for err in (w_err, r_err):
        assert "lock" not in err.lower(), err
    w, r = json.loads(w_out), json.loads(r_out)
    total = w["batches"] * 4 * 200
    assert Store(path).counts()["tokens"] == total
    # the reader saw the writes progress: several distinct totals, never going backwards
    assert len(r["seen"]) >= 3, r
    assert r["seen"] == sorted(r["seen"]) and r["seen"][-1] == total, r


HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    con.execute("SELECT 1")
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_store_locked_longer_than_the_timeout_gives_a_clear_error(tmp_path):
    path = tmp_path / "held.duckdb"
    Store(path).counts()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError) as err:
            Store(path, lock_timeout=0.2).runs()
        msg = str(err.value)
        assert str(path) in msg and "locked by another process" in msg and "0.2 s" in msg
    finally:
        holder.kill()
        holder.wait()
    assert Store(path, lock_timeout=5).counts()["runs"] == 0  # usable once released


def test_ids_read_from_dataframes_bind_as_parameters(store, tiny_lm):
    """Ids taken from query results are numpy scalars; every method accepts them."""
    import numpy as np
    from tests.helpers import fill_store

    run_id = np.int64(fill_store(store, tiny_lm, max_new_tokens=4, samples=1))
    trace_id = store.traces(run_id)["trace_id"].iloc[0]
    assert isinstance(trace_id, np.integer)
    assert len(store.tokens(trace_id)) == 4
    assert store.token_layers(trace_id).empty
    assert len(store.run_window_entropy(run_id)) == 8
    store.finish_run(run_id, "complete")
    store.delete_run(run_id)
    assert store.counts() == {"runs": 0, "traces": 0, "tokens": 0}
