"""Store benchmark: write rate (token rows/s with top-20 lists) and explorer query latency.

Phase 1 writes ``--traces`` synthetic traces of ``--length`` tokens (20 alternatives per
token, vocabulary ~49k, like a local-model run) in batches of ``--batch`` traces, three ways
into three fresh files, interleaved in ``--rounds`` rounds: ``Store.add_batches`` (the bulk
path), ``Store.add_traces`` once per batch, and raw DuckDB inserts of the prebuilt Arrow
tables; it reports each rate against the 500,000 rows/s target.

Phase 2 then times the queries the trace explorer issues, each through a fresh ``Store``
(as the dashboard does), median of ``--repeats`` runs interleaved query by query so that
machine noise hits all of them alike, and prints each as time and ratio to 100 ms.

    PYTHONPATH=. .venv/bin/python bench/bench_store.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.store import ROW_GROUP_SIZE, SCHEMA, Store, build_batch  # noqa: E402
from analysis.trace import Trace  # noqa: E402

VOCAB_SIZE = 49_152
WRITE_TARGET = 500_000.0   # token rows per second
QUERY_TARGET = 0.100       # seconds


def synthetic_vocab(size: int = VOCAB_SIZE, seed: int = 0) -> dict[int, str]:
    """Token texts shaped like a byte-level BPE vocabulary ('Ġword', pieces, digits)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = {}
    for i in range(size):
        n = int(rng.integers(1, 9))
        word = "".join(rng.choice(letters, n))
        out[i] = ("\u0120" + word) if i % 3 else word
    return out


def synthetic_traces(n: int, length: int, k: int, vocab: dict[int, str], seed: int = 0) -> list[Trace]:
    """Traces with the shape a recorded run has: distinct top-k ids per token drawn from a
    Zipf-like distribution, descending logprobs, entropies in a realistic range."""
    rng = np.random.default_rng(seed)
    texts = np.array([vocab[i] for i in range(len(vocab))], dtype=object)
    v = len(vocab)
    traces = []
    for j in range(n):
        # distinct ids per row: a random offset plus a per-row permutation of a small range
        base = np.minimum((rng.pareto(1.2, size=(length, 1)) * 200).astype(np.int64), v - 4 * k)
        ids = base + np.argsort(rng.random((length, 4 * k)), axis=1)[:, :k]
        lp = np.sort(-rng.exponential(2.0, size=(length, k)), axis=1)[:, ::-1] - 0.05
        chosen = ids[:, 0]
        h = rng.gamma(1.2, 0.8, size=length)
        tokens = texts[chosen].tolist()
        if j % 2 == 0:  # half the traces have a thinking/answer split
            tokens[length // 2] = "</think>"
        traces.append(Trace(
            prompt=f"What is {j} + {j + 1}? Think step by step.", tokens=tokens, token_ids=chosen,
            logprobs=lp[:, 0].copy(), topk_ids=ids, topk_logprobs=lp, entropy_full=h,
            entropy_full_t1=h * 1.1, metadata={"problem_id": f"p{j % 50}", "sample_idx": j // 50,
                                               "level": float(j % 5 + 1)}))
    return traces


def raw_insert(path: Path, tables: dict) -> None:
    """The floor: DuckDB alone, inserting already-built Arrow tables the same way (the file
    attached with the store's row group size, one transaction, detached after the batch),
    with no Python-side building."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH '{path}' AS raw (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        con.execute("USE raw")
        con.execute("BEGIN")
        for table, tbl in tables.items():
            # handed over in row-group-sized record batches, as the store does (parallel scan)
            con.register("_batch", pa.Table.from_batches(tbl.to_batches(max_chunksize=ROW_GROUP_SIZE)))
            cols = ", ".join(tbl.column_names)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _batch")
            con.unregister("_batch")
        con.execute("COMMIT")
        con.execute("USE memory")
        con.execute("DETACH raw")
    finally:
        con.close()


def bench_writes(paths: dict[str, Path], traces: list[Trace], batch: int, rounds: int,
                 vocab: dict[int, str]) -> tuple[int, dict[str, list[float]]]:
    """The same traces written three ways into three files, interleaved round by round so
    that machine noise hits all three alike; returns the bulk store's run id and, per way,
    the rate (token rows/s) of each round:

    - ``add_batches``: the bulk path: one stream of batches, one
      transaction per batch, the next batch built while the previous one is written;
    - ``add_traces``: one call per batch (the recorder's path), each attaching the file,
      writing one transaction and detaching;
    - ``raw``: DuckDB alone inserting the already built Arrow tables of each batch the same
      way (one connection, one transaction, closed after the batch).
    """
    stores = {"add_batches": Store(paths["add_batches"]), "add_traces": Store(paths["add_traces"])}
    runs = {k: st.create_run("bench", "bench", "synthetic", {"k": traces[0].k}) for k, st in stores.items()}
    con = duckdb.connect(str(paths["raw"]))
    con.execute(SCHEMA)
    con.close()
    per_round = -(-len(traces) // rounds)
    out: dict[str, list[float]] = {k: [] for k in ("add_batches", "add_traces", "raw")}
    for r in range(rounds):
        part = traces[r * per_round: (r + 1) * per_round]
        chunks = [part[i: i + batch] for i in range(0, len(part), batch)]
        rows = sum(t.n_tokens for t in part)
        # the vocabulary a recorder passes: the text of every id the traces use
        used = np.unique(np.concatenate([np.concatenate([t.topk_ids.ravel(), t.token_ids]) for t in part]))
        voc = {int(i): vocab[int(i)] for i in used}
        t0 = time.perf_counter()
        stores["add_batches"].add_batches(runs["add_batches"], chunks, voc)
        out["add_batches"].append(rows / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for c in chunks:
            stores["add_traces"].add_traces(runs["add_traces"], c, voc)
        out["add_traces"].append(rows / (time.perf_counter() - t0))
        built = [build_batch(c, 1 + r * per_round + i * batch, 0, 1, voc).tables for i, c in enumerate(chunks)]
        t0 = time.perf_counter()
        for tables in built:
            raw_insert(paths["raw"], tables)
        out["raw"].append(rows / (time.perf_counter() - t0))
    for k, st in stores.items():
        st.finish_run(runs[k])
    return runs["add_batches"], out


def bench_queries(path: Path, run_id: int, trace_id: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    queries = {
        "runs()": lambda s: s.runs(),
        "traces(run_id)": lambda s: s.traces(run_id),
        "tokens(trace_id) with alternatives": lambda s: s.tokens(trace_id),
        "run_window_entropy(run_id)": lambda s: s.run_window_entropy(run_id, "best", 4),
    }
    times: dict[str, list[tuple[float, float]]] = {q: [] for q in queries}
    for q in queries:  # warm the OS file cache once; not counted
        queries[q](Store(path))
    for _ in range(repeats):
        for q, fn in queries.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(Store(path))  # a fresh Store per call, as the dashboard's cached loaders do
            times[q].append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=1000)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100, help="traces per batch (one transaction each)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds the three ways of writing alternate in")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--dir", default=None, help="folder for the store file (default: a temp folder)")
    args = ap.parse_args(argv)

    vocab = synthetic_vocab()
    t0 = time.perf_counter()
    traces = synthetic_traces(args.traces, args.length, args.k, vocab)
    print(f"built {len(traces)} synthetic traces x {args.length} tokens, k={args.k} "
          f"in {time.perf_counter() - t0:.1f} s (not timed)")

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = {k: Path(tmp) / f"{k}.duckdb" for k in ("add_batches", "add_traces", "raw")}
        path = paths["add_batches"]
        run_id, rates = bench_writes(paths, traces, args.batch, args.rounds, vocab)
        rows = args.traces * args.length
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"\nwrite: {rows:,} token rows (top-{args.k} lists) in batches of {args.batch} traces "
              f"({args.batch * args.length:,} rows), {args.rounds} rounds interleaved; median rate of the rounds:")
        notes = {"add_batches": "bulk stream (imports, demo)", "add_traces": "one call per batch (recorder)",
                 "raw": "DuckDB alone, tables prebuilt"}
        for k, rate in med.items():
            verdict = ("OK" if rate >= WRITE_TARGET else "BELOW TARGET") if k != "raw" else "floor"
            print(f"  {k:12s} {rate:>11,.0f} rows/s   ratio to target {rate / WRITE_TARGET:.2f} ({verdict})"
                  f"   {notes[k]}")
        print(f"  add_batches / raw: {med['add_batches'] / med['raw']:.2f}   add_traces / raw: "
              f"{med['add_traces'] / med['raw']:.2f}")
        print(f"  file size with {rows:,} tokens: {path.stat().st_size / 2**20:.0f} MiB; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

        counts = Store(path).counts()
        trace_id = int(Store(path).traces(run_id)["trace_id"].iloc[len(traces) // 2])
        times = bench_queries(path, run_id, trace_id, args.repeats)
        print(f"\nqueries with {counts['tokens']:,} tokens in the store "
              f"(median of {args.repeats}, fresh Store per call):")
        for q, ts in times.items():
            m = statistics.median(t for t, _ in ts)
            c = statistics.median(c for _, c in ts)
            print(f"  {q:36s} {m * 1000:7.1f} ms wall ({c * 1000:6.1f} ms CPU)  ratio to "
                  f"{QUERY_TARGET * 1000:.0f} ms: {m / QUERY_TARGET:.2f} ({'OK' if m < QUERY_TARGET else 'OVER TARGET'})")
        print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

if __name__ == "__main__":
    main()
