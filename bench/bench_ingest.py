"""Ingest benchmark: parse + store rate of OpenAI chat JSONL with top-20, and peak memory.

    python bench/bench_ingest.py                 # rate on ~100k tokens, memory on a 1 GiB file
    python bench/bench_ingest.py --size-mb 256   # a smaller file for the memory part

Every import runs in a fresh subprocess, so that the memory figure is the import's own:
peak resident memory (RSS, polled every 10 ms, and the kernel's ru_maxrss) minus the RSS
measured after the imports and before the file is opened. Files are generated in a
temporary folder and deleted afterwards. All figures are from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["the", " answer", " is", " wait", ",", " let", " me", " check", " 12", " +", " 7", " =", " 19", ".",
         " so", " however", "\n", " we", " need", " to", " compute", " first", " then", " é", " 東京", " 😀"]


def chat_line(rng: random.Random, rid: str, n_tokens: int, k: int = 20) -> str:
    """One chat.completion with ``n_tokens`` tokens and top-``k`` alternatives (bytes included)."""
    content = []
    for _ in range(n_tokens):
        alts = rng.sample(WORDS, k) if k <= len(WORDS) else [rng.choice(WORDS) for _ in range(k)]
        # a distribution over the k alternatives (its probabilities sum to 0.95: some mass is elsewhere)
        w = [rng.expovariate(1.0) ** 3 for _ in range(k)]
        lps = sorted((math.log(0.95 * x / sum(w)) for x in w), reverse=True)
        tops = [{"token": a, "logprob": round(lp, 6), "bytes": list(a.encode())} for a, lp in zip(alts, lps)]
        content.append({"token": alts[0], "logprob": tops[0]["logprob"], "bytes": tops[0]["bytes"],
                        "top_logprobs": tops})
    text = "".join(c["token"] for c in content)
    return json.dumps({"id": rid, "object": "chat.completion", "created": 1730000000, "model": "bench-model",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "logprobs": {"content": content}, "finish_reason": "length"}],
                       "usage": {"completion_tokens": n_tokens}}, ensure_ascii=False)


def write_file(path: Path, target_bytes: int | None = None, n_traces: int | None = None,
               tokens_per_trace: int = 500, seed: int = 0) -> tuple[int, int]:
    """Write a JSONL file of chat completions; return (traces, tokens). Lines are drawn from a
    pool of distinct responses (generating JSON is slower than reading it) with unique ids."""
    rng = random.Random(seed)
    pool = [chat_line(rng, "ID", tokens_per_trace) for _ in range(16)]
    n = written = 0
    with path.open("w", encoding="utf-8") as f:
        while (n_traces is None or n < n_traces) and (target_bytes is None or written < target_bytes):
            line = pool[n % len(pool)].replace('"id": "ID"', f'"id": "chatcmpl-{n}"', 1) + "\n"
            f.write(line)
            written += len(line.encode())
            n += 1
    return n, n * tokens_per_trace


CHILD = r"""
import json, os, resource, sys, threading, time
import psutil
from analysis.formats import ingest_file
from analysis.store import Store
proc = psutil.Process()
store = Store(sys.argv[1])
store.counts()                     # schema created, DuckDB loaded: part of the baseline
base = proc.memory_info().rss
peak = [base]
stop = threading.Event()
def poll():
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.01)
t = threading.Thread(target=poll, daemon=True); t.start()
t0 = time.perf_counter()
res = ingest_file(store, sys.argv[2])
dt = time.perf_counter() - t0
stop.set(); t.join()
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": dt, "traces": res.n_traces, "tokens": res.n_tokens, "base": base,
                  "peak_polled": peak[0], "peak_maxrss": maxrss}))
"""


RAW = r"""
import json, sys, time
from analysis.formats.fastchat import _blocks, _parse
t0 = time.perf_counter()
rows = 0
with open(sys.argv[1], "rb", buffering=0) as f:
    for data, longest, numbers, done in _blocks(f):
        rows += _parse(data, longest).num_rows
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": rows}))
"""


def raw_parse_seconds(path: Path) -> float:
    """Seconds pyarrow alone takes to parse the file into columns, in the importer's blocks and
    with its schema, one block at a time (each on every core): the floor an import builds on."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", RAW, str(path)], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def run_child(store: Path, path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(store), str(path)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-traces", type=int, default=200, help="traces of 500 tokens for the rate part")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the rate part (the median is reported)")
    ap.add_argument("--size-mb", type=float, default=1024, help="file size for the memory part (MiB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="thinkscope-bench-") as tmp:
        tmp = Path(tmp)
        print(f"machine: {os.cpu_count()} CPU(s), python {sys.version.split()[0]}")
        # ---- rate: fresh processes, the import and pyarrow alone taking turns, several rounds
        # (the machine is shared: single runs vary by +-20%; the median is the figure)
        small = tmp / "rate.jsonl"
        n, tokens = write_file(small, n_traces=args.rate_traces)
        size = small.stat().st_size
        print(f"rate: {n} traces, {tokens:,} tokens, top-20, {size / 2**20:,.1f} MiB JSONL; "
              f"{args.rounds} rounds")
        rates, ratios = [], []
        for i in range(args.rounds):
            r = run_child(tmp / f"rate{i}.duckdb", small)
            raw = raw_parse_seconds(small)
            rates.append(r["tokens"] / r["seconds"])
            ratios.append(r["seconds"] / raw)
            print(f"  round {i + 1}: parsed, checked and stored in {r['seconds']:.2f} s = {rates[-1]:,.0f} tokens/s "
                  f"({size / 2**20 / r['seconds']:,.1f} MiB/s); pyarrow alone parses it in {raw:.2f} s "
                  f"({r['tokens'] / raw:,.0f} tokens/s): the import takes {ratios[-1]:.2f} x that")
        rate = statistics.median(rates)
        print(f"rate: median {rate:,.0f} tokens/s (best {max(rates):,.0f}); target >= 50,000 tokens/s: "
              f"{'met' if rate >= 50_000 else 'NOT met'} (ratio {rate / 50_000:.2f}); the import takes a median "
              f"{statistics.median(ratios):.2f} x pyarrow's parse alone")
        small.unlink()
        # ---- memory
        big = tmp / "big.jsonl"
        t0 = time.perf_counter()
        n, tokens = write_file(big, target_bytes=int(args.size_mb * 2**20))
        size = big.stat().st_size
        print(f"memory: generated {size / 2**20:,.0f} MiB ({n:,} traces, {tokens:,} tokens) "
              f"in {time.perf_counter() - t0:.0f} s")
        m = run_child(tmp / "mem.duckdb", big)
        above = max(m["peak_polled"], m["peak_maxrss"]) - m["base"]
        print(f"memory: imported in {m['seconds']:.0f} s ({m['tokens'] / m['seconds']:,.0f} tokens/s); "
              f"baseline RSS {m['base'] / 2**20:,.0f} MiB, peak {max(m['peak_polled'], m['peak_maxrss']) / 2**20:,.0f} "
              f"MiB, peak above baseline {above / 2**20:,.0f} MiB = {above / size:.3f} x the file size; "
              f"target < 400 MB above baseline: {'met' if above < 400e6 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
