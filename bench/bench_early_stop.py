"""Early-stop slider over 10,000 traces: time to recompute on a threshold move vs the 200 ms target.

    python bench/bench_early_stop.py [--traces 10000] [--mean-len 300] [--repeat 20]

Synthetic traces (gamma-distributed token entropies, lengths uniform in [50, 2*mean-50]),
half calibration, half held-out, as on the early-stop page. Reported per rule:
- precompute: building the sorted arrays once per (rule, k, min tokens, budget) change;
- slider move: what the page recomputes when tau moves: the point on both splits, every
  trace's stop position, and the whole curve for both splits (median of --repeat moves).
All figures come from this one run of the script.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.early_stop import RunTokens, StopModel, StopRule, calibration_split  # noqa: E402

TARGET_S = 0.200


def synthetic(n: int, mean_len: int, seed: int = 0) -> RunTokens:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(50, 2 * mean_len - 50, size=n)
    h = rng.gamma(2.0, 0.4, size=int(lengths.sum()))
    correct = (rng.random(n) < 0.6).astype(float)
    answer = (rng.random(n) * lengths).astype(np.int64)
    return RunTokens(np.arange(n), lengths, h, correct, answer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=10_000)
    ap.add_argument("--mean-len", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    rt = synthetic(args.traces, args.mean_len)
    calib = calibration_split(rt.n, rt.n // 2, seed=0)
    parts = {"calibration": rt.subset(calib), "held-out": rt.subset(~calib)}
    print(f"{rt.n} traces, {rt.h.size:,} tokens; target {TARGET_S * 1000:.0f} ms per slider move")
    worst = 0.0
    for rule in (StopRule("streaming", k=16, min_tokens=32), StopRule("gate", budget=64)):
        t0 = time.perf_counter()
        models = {name: StopModel(p, rule) for name, p in parts.items()}
        full = StopModel(rt, rule)
        pre = time.perf_counter() - t0
        taus = np.linspace(0.3, 1.2, args.repeat)
        times = []
        for tau in taus:
            t0 = time.perf_counter()
            for m in models.values():
                m.point(float(tau))
                m.curve()
            full.stops(float(tau))
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        worst = max(worst, med)
        print(f"{rule.mode:>9}: precompute {pre * 1000:7.1f} ms (once per rule change); slider move median "
              f"{med * 1000:6.1f} ms, max {max(times) * 1000:6.1f} ms -> {med / TARGET_S:.2f} x the 200 ms target")
    print("PASS" if worst < TARGET_S else "SLOWER THAN TARGET")
    return 0


if __name__ == "__main__":
    sys.exit(main())
