"""Client overhead of recording through an inference server, and the store writer's share.

A real llama-cpp-python server on loopback serves the embedded SmolLM2 GGUF. At each
concurrency (1, 4, 8 requests in flight) two arms send the very same requests (the bodies
``record_server_run`` sends: chat, greedy, the same max_tokens and top-k logprobs):
- bare: ``http.client`` from a thread pool, the answers read and discarded;
- thinkscope: ``record_server_run`` (retrying client, the reader, the store writes).
The arms alternate over rounds (A B, then B A, ...) so the machine's load hits both alike; the
figure is the median over rounds of each round's ratio thinkscope / bare (target <= 1.10),
with the spread. The writer's share is the time spent in ``Store.add_traces`` (and the saved
responses) over the thinkscope arm's wall time, median over rounds. Traces per hour are the
thinkscope arm's (this CPU server decodes one request at a time, so concurrency cannot raise
them: the bottleneck is the server).

    PYTHONPATH=. .venv/bin/python bench/bench_server.py --rounds 3 --prompts 6 --max-tokens 16
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.record import GenerationSettings, Prompt  # noqa: E402
from analysis.server.generate import record_server_run  # noqa: E402
from analysis.server.servers import connect, generation_body  # noqa: E402
from analysis.store import Store  # noqa: E402
from tests.server_support import LlamaServer  # noqa: E402

TARGET = 1.10
PROMPTS = [
    "What is 17 + 25? Think step by step.",
    "A farmer has 12 cows and buys 7 more. How many cows does he have?",
    "What is 9 times 8? Explain your reasoning.",
    "Tom reads 15 pages a day. How many pages does he read in a week?",
    "Name three prime numbers.",
    "What is half of 90?",
    "Is 51 a prime number?",
    "Spell the word 'seven' backwards.",
]


def bare(url: str, path: str, bodies: list[bytes], concurrency: int) -> float:
    """Seconds to send every body and read (then discard) every answer."""
    host, port = url.replace("http://", "").split(":")
    local = threading.local()

    def one(body: bytes) -> None:
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = http.client.HTTPConnection(host, int(port), timeout=600)
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"bare client: HTTP {r.status}")

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--concurrency", default="1,4,8")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    prompts = [Prompt(p) for p in (PROMPTS * 4)[: args.prompts]]
    settings = GenerationSettings(do_sample=False, max_new_tokens=args.max_tokens, top_k=args.top_k)
    with tempfile.TemporaryDirectory() as tmp:
        srv = LlamaServer(log=Path(tmp) / "server.log").start()
        try:
            server = connect(srv.url, None, top_k=args.top_k)
            bodies = [json.dumps(generation_body(server, p.text, settings, 1, settings.seed + i)).encode()
                      for i, p in enumerate(prompts)]
            bare(srv.url, server.path, bodies[:1], 1)  # warm the server (first request loads caches)
            ratios: dict[int, list[float]] = {c: [] for c in levels}
            shares: dict[int, list[float]] = {c: [] for c in levels}
            rates: dict[int, list[float]] = {c: [] for c in levels}
            load0 = os.getloadavg()[0]
            for r in range(args.rounds):
                for c in levels:
                    store = Store(Path(tmp) / f"r{r}c{c}.duckdb")
                    times = {}
                    for arm in (("bare", "ts") if r % 2 == 0 else ("ts", "bare")):
                        if arm == "bare":
                            times["bare"] = bare(srv.url, server.path, bodies, c)
                        else:
                            s = connect(srv.url, None, top_k=args.top_k)
                            t0 = time.perf_counter()
                            res = record_server_run(store, s, prompts, settings, "bench", concurrency=c)
                            times["ts"] = time.perf_counter() - t0
                            assert res.n_traces == len(prompts) and not res.failed, res.failed
                            shares[c].append(res.write_seconds / res.seconds)
                            rates[c].append(len(prompts) / times["ts"] * 3600)
                    ratios[c].append(times["ts"] / times["bare"])
                    print(f"round {r + 1} concurrency {c}: bare {times['bare']:.2f} s, thinkscope {times['ts']:.2f} s,"
                          f" ratio {times['ts'] / times['bare']:.3f}", flush=True)
            load1 = os.getloadavg()[0]
        finally:
            srv.stop()
    print(f"\n{len(prompts)} chat requests per arm (greedy, {args.max_tokens} tokens, top-{args.top_k} logprobs), "
          f"{args.rounds} rounds; load average {load0:.1f} -> {load1:.1f}")
    for c in levels:
        med = statistics.median(ratios[c])
        print(f"concurrency {c}: thinkscope / bare wall time = {med:.3f} x (median of {len(ratios[c])} rounds, "
              f"{min(ratios[c]):.3f}-{max(ratios[c]):.3f}; target <= {TARGET:.2f}: "
              f"{'ok' if med <= TARGET else 'MISSED'}); store writer {100 * statistics.median(shares[c]):.1f} % of "
              f"wall time (median); {statistics.median(rates[c]):,.0f} traces/hour")


if __name__ == "__main__":
    main()
