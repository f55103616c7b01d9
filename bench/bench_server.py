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

``--replay S`` records one real answer per prompt from the llama-cpp-python server first, then
serves those answers from a loopback stub after S seconds each (S = 0: thinkscope's own cost
with a server that costs nothing, the worst case for the ratio; on a busy machine the real
server's latency varies more than the arms differ).

    PYTHONPATH=. .venv/bin/python bench/bench_server.py --rounds 3 --prompts 6 --max-tokens 16
    PYTHONPATH=. .venv/bin/python bench/bench_server.py --replay 0,0.5 --rounds 5 --prompts 16
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import http.server
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


class Replay:
    """A loopback stub answering /v1/models as llama-cpp-python does and each POST with the
    recorded answer of its prompt (a fresh id each time) after ``latency`` seconds."""

    def __init__(self, models: dict, answers: dict[str, bytes], latency: float):
        replay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, body: bytes):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(json.dumps(models).encode())

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                time.sleep(latency)
                with replay.lock:
                    replay.n += 1
                    n = replay.n
                self._send(answers[req["messages"][-1]["content"]].replace(b'"chatcmpl-', f'"chatcmpl-{n}-'.encode(), 1))

        self.lock, self.n = threading.Lock(), 0
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def record_answers(url: str, path: str, prompts, bodies: list[bytes]) -> tuple[dict, dict[str, bytes]]:
    host, port = url.replace("http://", "").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    c.request("GET", "/v1/models")
    models = json.loads(c.getresponse().read())
    answers = {}
    for p, body in zip(prompts, bodies):
        if p.text in answers:
            continue
        c.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        answers[p.text] = c.getresponse().read()
    return models, answers


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--replay", metavar="S[,S...]",
                    help="serve recorded real answers from a stub after S seconds each (see above)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    prompts = [Prompt(p) for p in (PROMPTS * 4)[: args.prompts]]
    settings = GenerationSettings(do_sample=False, max_new_tokens=args.max_tokens, top_k=args.top_k)
    latencies = [None] if args.replay is None else [float(x) for x in args.replay.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        srv = LlamaServer(log=Path(tmp) / "server.log").start()
        try:
            server = connect(srv.url, None, top_k=args.top_k)
            bodies = [json.dumps(generation_body(server, p.text, settings, 1, settings.seed + i)).encode()
                      for i, p in enumerate(prompts)]
            if args.replay is not None:
                models, answers = record_answers(srv.url, server.path, prompts, bodies)
                srv.stop()
            for latency in latencies:
                url = srv.url if latency is None else Replay(models, answers, latency).url
                where = ("the llama-cpp-python server" if latency is None
                         else f"recorded llama-cpp-python answers replayed after {latency:g} s each")
                measure(url, server.path, prompts, bodies, settings, levels, args, Path(tmp), where)
        finally:
            srv.stop()


def measure(url: str, path: str, prompts, bodies, settings, levels, args, tmp: Path, where: str) -> None:
    """The interleaved rounds at every concurrency, and their summary."""
    bare(url, path, bodies[:1], 1)  # warm the server (first request loads caches)
    ratios: dict[int, list[float]] = {c: [] for c in levels}
    shares: dict[int, list[float]] = {c: [] for c in levels}
    rates: dict[int, list[float]] = {c: [] for c in levels}
    load0 = os.getloadavg()[0]
    for r in range(args.rounds):
        for c in levels:
            store = Store(tmp / f"{len(list(tmp.glob('*.duckdb')))}.duckdb")
            times = {}
            for arm in (("bare", "ts") if r % 2 == 0 else ("ts", "bare")):
                if arm == "bare":
                    times["bare"] = bare(url, path, bodies, c)
                else:
                    s = connect(url, None, top_k=args.top_k)
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
    print(f"\n{len(prompts)} chat requests per arm (greedy, {args.max_tokens} tokens, top-{args.top_k} logprobs) to "
          f"{where}, {args.rounds} rounds; load average {load0:.1f} -> {load1:.1f}")
    for c in levels:
        med = statistics.median(ratios[c])
        print(f"concurrency {c}: thinkscope / bare wall time = {med:.3f} x (median of {len(ratios[c])} rounds, "
              f"{min(ratios[c]):.3f}-{max(ratios[c]):.3f}; target <= {TARGET:.2f}: "
              f"{'ok' if med <= TARGET else 'MISSED'}); store writer {100 * statistics.median(shares[c]):.1f} % of "
              f"wall time (median); {statistics.median(rates[c]):,.0f} traces/hour", flush=True)


if __name__ == "__main__":
    main()
