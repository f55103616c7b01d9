"""Signals and re-scoring speed.

    python bench/bench_signals.py [--traces 10000] [--resamples 1000] [--rounds 5] [--parts sr]
                                  [--model MODEL] [--score-traces 4] [--score-tokens 256]

Part s (signals): AUROC and AUPRC for "wrong" with bootstrap 95 % intervals of 20 per-trace
signals over --traces synthetic traces (4 samples per problem, so whole problems are
resampled), --resamples resamples shared by every signal, as ``thinkscope signals`` and the
Signals page compute them. Target: under 2 s (median of --rounds).

Part r (re-scoring): ``analysis.compare.score_ids`` (one teacher-forced forward pass, then
entropy at T and at T = 1, chosen logprobs and the top-20 at T) against a plain forward pass
of the same model over the same tokens (``model(input_ids)``, all logits), interleaved over
--rounds, median of the per-round ratios. Target: at most 1.10 x. The model defaults to the
embedded SmolLM2-135M-Instruct. All figures come from this one run of the script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import signals as sig  # noqa: E402

SIGNALS_TARGET_S = 2.0
RESCORE_TARGET = 1.10


def synthetic_signals(n: int, n_signals: int = 20, samples: int = 4, seed: int = 0):
    """Per-trace signals, wrongness and problem ids: some signals informative, some noise, some
    with many ties (counts)."""
    rng = np.random.default_rng(seed)
    problems = np.repeat(np.arange(n // samples + 1), samples)[:n]
    hard = rng.random(problems.max() + 1)[problems]
    wrong = rng.random(n) < hard
    values = {}
    for k in range(n_signals):
        strength = 0.8 * (k % 4) / 3
        x = rng.normal(size=n) + strength * wrong
        values[f"s{k}"] = np.round(x * 4) if k % 5 == 0 else x  # rounded: heavy ties
    return values, wrong, problems.astype(str)


def bench_signals(args) -> float:
    values, wrong, groups = synthetic_signals(args.traces)
    times, cpu = [], []
    for r in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        ev = sig.evaluate_signals(values, wrong, groups, n_resamples=args.resamples, seed=r)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    print(f"signals: {len(values)} signals x {args.traces:,} traces ({ev.n_groups:,} problems resampled) x "
          f"{args.resamples:,} resamples: wall time median {med:.3f} s over {args.rounds} rounds "
          f"(min {min(times):.3f}, max {max(times):.3f}), CPU time of all threads median "
          f"{statistics.median(cpu):.3f} s; target {SIGNALS_TARGET_S:.1f} s wall -> "
          f"{med / SIGNALS_TARGET_S:.2f} x of target")
    return med / SIGNALS_TARGET_S


def bench_rescore(args) -> float:
    import torch

    from analysis.compare import score_ids
    from analysis.models import load_model

    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    rng = np.random.default_rng(0)
    vocab = len(lm.tokenizer)
    seqs = [(rng.integers(0, vocab, 40).tolist(), rng.integers(0, vocab, args.score_tokens).tolist())
            for _ in range(args.score_traces)]

    def plain():
        with torch.inference_mode():
            for p, c in seqs:
                lm.model(input_ids=torch.tensor([p + c])).logits.sum().item()

    def rescore():
        for p, c in seqs:
            score_ids(lm, p, c, 0.7, 20)

    plain(), rescore()  # warm up
    ratios, tp, tr = [], [], []
    for r in range(args.rounds):
        order = (plain, rescore) if r % 2 == 0 else (rescore, plain)
        got = {}
        for fn in order:
            t0 = time.perf_counter()
            fn()
            got[fn.__name__] = time.perf_counter() - t0
        tp.append(got["plain"])
        tr.append(got["rescore"])
        ratios.append(got["rescore"] / got["plain"])
    med = statistics.median(ratios)
    print(f"re-scoring ({lm.name}, {args.score_traces} traces of 40 prompt + {args.score_tokens} completion tokens, "
          f"{args.threads} thread(s)): plain forward median {statistics.median(tp):.3f} s, re-scoring (entropy at "
          f"T=0.7 and T=1, chosen logprob, top-20) median {statistics.median(tr):.3f} s; ratio median {med:.3f} x "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}) over {args.rounds} interleaved rounds; target "
          f"{RESCORE_TARGET:.2f} x")
    return med / RESCORE_TARGET


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=10_000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parts", default="sr", help="s: signals, r: re-scoring")
    ap.add_argument("--model", help="model for part r (default: the embedded one)")
    ap.add_argument("--score-traces", type=int, default=4)
    ap.add_argument("--score-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    worst = 0.0
    if "s" in args.parts:
        worst = max(worst, bench_signals(args))
    if "r" in args.parts:
        worst = max(worst, bench_rescore(args))
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if worst <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
