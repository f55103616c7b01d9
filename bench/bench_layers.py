"""Layer-recording benchmark on the embedded SmolLM2-135M (30 layers, 9 heads, vocabulary 49,152).

In one run it prints:

(a) logit lens / bare unembedding: ``lens_entropy_rows`` over the residual rows of all 30
    layers of each ``--lens-tokens`` sequence (128 and 1,024 tokens), against the bare matrix
    products it needs, into a preallocated buffer, with the final norm left out of the bare
    side. The bare side is the faster, in each round, of the same [rows x vocabulary block]
    products the lens does and one product over the whole vocabulary per chunk of rows (both
    are shown). Target <= 1.20.
(b) attention entropy forward / eager forward and / sdpa forward: a whole model forward of
    ``--attn-tokens`` tokens with the entropy-recording attention against the same forward
    with eager attention (target <= 1.15) and with sdpa attention (target <= 2.5).
(c) peak memory above the loaded model of ``record_layers`` on a ``--memory-tokens`` (4,096)
    token trace with the logit lens and attention entropy both on, measured in a fresh
    process (peak RSS, VmHWM reset after loading). Target < 1 GB. The lens there keeps every
    ``--memory-lens-every``-th layer to save time: its memory does not depend on how many
    layers are kept (each layer is reduced and freed in chunks).
(d) the naive approach (eager attention with output_attentions and output_hidden_states,
    every layer's full lens logits, then entropies) side by side with ours at
    ``--naive-tokens`` tokens: time and peak memory, and the naive memory extrapolated to
    4,096 tokens (it does not fit this machine).
(e) an independent check against nnsight (layer outputs saved by nnsight, lens applied by
    hand, entropy in float64), when nnsight is installed.

Timings (wall clock) come from ``--rounds`` rounds (at least 5) that run every side once, in
turn, after one warm-up of each; a ratio is computed per round, and the median ratio is
reported with its spread (min-max over the rounds), as a ratio to its target (<= 1 meets
it), with the machine's 1-minute load average (os.getloadavg) before and after. A target is
met when the median meets it. ``--parts`` picks which of (a)-(e) to run.

    PYTHONPATH=. .venv/bin/python bench/bench_layers.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis import layers as L  # noqa: E402
from analysis.models import load_model  # noqa: E402

LENS_TARGET = 1.20
ATTN_EAGER_TARGET = 1.15
ATTN_SDPA_TARGET = 2.5
MIN_ROUNDS = 5
MEMORY_TARGET_MB = 1024.0


# --------------------------------------------------------------------------- memory probes


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Peak resident memory during a block: VmHWM reset through /proc/self/clear_refs when the
    kernel allows it, else a thread sampling RSS every millisecond."""

    def __enter__(self):
        gc.collect()
        self.base = _rss_mb()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = _hwm_mb() <= self.base + 1
        except OSError:
            self.exact = False
        self.sampled = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.sampled = max(self.sampled, _rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(_hwm_mb(), self.sampled) if self.exact else self.sampled
        self.above = self.peak - self.base
        self.method = "VmHWM" if self.exact else "sampled RSS"


def probe(kind: str, tokens: int, lens_every: int) -> dict:
    """Run one recording in this (fresh) process and return time and peak memory above the model."""
    torch.manual_seed(0)
    lm = load_model()
    model = lm.model
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    prompt = torch.randint(0, 40000, (16,)).tolist()
    opts = L.LayerOptions(logit_lens=True, lens_every=lens_every, attention_entropy=True)
    L.record_layers(model, prompt[:8], prompt[8:], opts)  # warm-up: lazy initialisation, kernels
    if kind == "naive":
        L.naive_layers(model, prompt[:8], prompt[8:], kept=L.lens_layers(30, lens_every))
    ids = torch.randint(0, 40000, (tokens,)).tolist()
    n_prompt = 32
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if kind == "naive":
            L.naive_layers(model, ids[:n_prompt], ids[n_prompt:], kept=L.lens_layers(30, lens_every))
        else:
            L.record_layers(model, ids[:n_prompt], ids[n_prompt:], opts)
        seconds = time.perf_counter() - t0
    return {"kind": kind, "tokens": tokens, "lens_every": lens_every, "seconds": seconds,
            "peak_above_model_mb": mem.above, "method": mem.method, "model_params_mb": params_mb}


def run_probe(kind: str, tokens: int, lens_every: int) -> dict:
    cmd = [sys.executable, __file__, "--probe", kind, "--tokens", str(tokens), "--lens-every", str(lens_every)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    if out.returncode:
        raise RuntimeError(f"probe {kind} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- timings


def rounds(fns: dict, n: int, warm: dict | None = None) -> dict[str, list[float]]:
    """Seconds of each function in each of ``n`` rounds; every round runs them all, in turn,
    so machine noise lands on every side alike. ``warm`` (default ``fns``) runs once first."""
    for f in (warm or fns).values():
        f()
    times = {k: [] for k in fns}
    for _ in range(n):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def ratio_stats(num: list[float], den: list[float]) -> dict:
    """Median and min-max of the per-round ratios num / den."""
    r = [a / b for a, b in zip(num, den)]
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "n": len(r)}


def verdict(stats: dict, target: float, what: str) -> str:
    """One line: the median ratio with its spread, and as a ratio to the target."""
    rel = stats["median"] / target
    return (f"{what} = {stats['median']:.3f} median of {stats['n']} rounds (min {stats['min']:.3f}, "
            f"max {stats['max']:.3f}); target <= {target}: median / target = {rel:.3f} "
            f"{'OK' if rel <= 1 else 'MISSED'}")


def load() -> float:
    return os.getloadavg()[0]


def residual_rows(model, parts: L.LensParts, tokens: int) -> torch.Tensor:
    """The residual stream after every block (pre-norm), stacked: [layers * tokens, hidden]."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(L._block_output(o)[0].clone()))
             for b in parts.blocks]
    try:
        with torch.inference_mode():
            model(input_ids=torch.randint(0, 40000, (1, tokens)), use_cache=False, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(outs)


def bench_lens(lm, tokens: int, n_rounds: int) -> dict:
    parts = L.find_lens_parts(lm.model)
    rows = residual_rows(lm.model, parts, tokens)
    with torch.inference_mode():
        normed = parts.norm(rows)
    vocab = parts.weight.shape[0]
    chunk = L.LENS_ROWS
    width = min(vocab, L.lens_block_width(chunk))
    block = torch.empty(chunk * width)
    whole = torch.empty(chunk, vocab)
    wt = parts.weight.T

    def bare_blocks(x_all=normed):
        with torch.inference_mode():
            for s in range(0, x_all.shape[0], chunk):
                x = x_all[s: s + chunk]
                for v0 in range(0, vocab, width):
                    w = min(width, vocab - v0)
                    torch.mm(x, wt[:, v0: v0 + w], out=block[: x.shape[0] * w].view(x.shape[0], w))

    def bare_whole(x_all=normed):
        with torch.inference_mode():
            for s in range(0, x_all.shape[0], chunk):
                x = x_all[s: s + chunk]
                torch.mm(x, wt, out=whole[: x.shape[0]])

    def lens(h=rows):
        with torch.inference_mode():
            L.lens_entropy_rows(h, parts, chunk)

    few = 2 * chunk  # warm-up on a few chunks: kernels and buffers, not a whole extra round
    warm = {"blocks": lambda: bare_blocks(normed[:few]), "whole": lambda: bare_whole(normed[:few]),
            "lens": lambda: lens(rows[:few])}
    before = load()
    t = rounds({"blocks": bare_blocks, "whole": bare_whole, "lens": lens}, n_rounds, warm)
    bare = [min(a, b) for a, b in zip(t["blocks"], t["whole"])]
    return {"tokens": tokens, "rows": int(rows.shape[0]), "chunk": chunk, "width": width,
            "lens": statistics.median(t["lens"]), "blocks": statistics.median(t["blocks"]),
            "whole": statistics.median(t["whole"]), "ratio": ratio_stats(t["lens"], bare),
            "load": (before, load())}


def bench_attention(lm, tokens: int, n_rounds: int) -> dict:
    model = lm.model
    ids = torch.randint(0, 40000, (1, tokens))
    before = model.config._attn_implementation

    def forward(impl):
        def run():
            with torch.inference_mode():
                model.set_attn_implementation(impl)
                try:
                    model(input_ids=ids, use_cache=False, logits_to_keep=1)
                finally:
                    model.set_attn_implementation(before)
        return run

    def entropy():
        with torch.inference_mode(), L.recording_attention(model, L.AttentionRecorder(head_layer=14)):
            model(input_ids=ids, use_cache=False, logits_to_keep=1)

    start = load()
    t = rounds({"eager": forward("eager"), "entropy": entropy, "sdpa": forward("sdpa")}, n_rounds)
    return {**{k: statistics.median(v) for k, v in t.items()},
            "vs_eager": ratio_stats(t["entropy"], t["eager"]),
            "vs_sdpa": ratio_stats(t["entropy"], t["sdpa"]), "load": (start, load())}


def nnsight_check(lm, tokens: int = 48) -> str:
    """Lens entropies from nnsight-saved layer outputs (lens by hand, float64) vs ours."""
    try:
        from nnsight import NNsight
    except ImportError:
        return "nnsight is not installed: independent check skipped (pip install nnsight)"
    model = lm.model
    parts = L.find_lens_parts(model)
    ids = torch.randint(0, 40000, (tokens,)).tolist()
    rec = L.record_layers(model, ids[:8], ids[8:], L.LayerOptions(logit_lens=True))
    wrapped = NNsight(model)
    saved = []
    with torch.inference_mode():
        with wrapped.trace(torch.tensor([ids[:-1]])):
            for i in range(parts.n_layers):
                saved.append(wrapped.model.layers[i].output.save())
        ent = []
        for h in saved:
            h = h[0] if isinstance(h, tuple) else h
            z = model.lm_head(model.model.norm(h[0])).double()
            ent.append(-(z.softmax(-1) * z.log_softmax(-1)).sum(-1)[7:])
    theirs = torch.stack(ent, dim=1).numpy()
    diff = float(np.abs(theirs - rec.arrays["lens_entropy"]).max())
    import nnsight
    return (f"nnsight {nnsight.__version__}: max |lens entropy difference| over 30 layers x {tokens - 8} tokens "
            f"= {diff:.2e} nats ({'agrees' if diff < 1e-3 else 'DISAGREES'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lens-tokens", default="128,1024", help="comma-separated sequence lengths for (a)")
    ap.add_argument("--attn-tokens", type=int, default=1024)
    ap.add_argument("--memory-tokens", type=int, default=4096)
    ap.add_argument("--memory-lens-every", type=int, default=10)
    ap.add_argument("--naive-tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=MIN_ROUNDS, help=f"timing rounds (at least {MIN_ROUNDS})")
    ap.add_argument("--parts", default="abcde", help="which of (a)-(e) to run, e.g. ab")
    ap.add_argument("--probe", choices=["bounded", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lens-every", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.tokens, args.lens_every)))
        return 0
    if args.rounds < MIN_ROUNDS:
        ap.error(f"--rounds must be at least {MIN_ROUNDS}")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load():.2f} (1 min) at the start", flush=True)
    lm = load_model()
    torch.manual_seed(0)

    if "a" in args.parts:
        for tokens in [int(t) for t in args.lens_tokens.split(",") if t.strip()]:
            a = bench_lens(lm, tokens, args.rounds)
            print(f"(a) logit lens, 30 layers x {tokens} tokens = {a['rows']:,} rows, chunks of {a['chunk']} rows "
                  f"x {a['width']} vocabulary columns: lens {a['lens']:.2f} s, bare matmuls {a['blocks']:.2f} s "
                  f"(same blocks) / {a['whole']:.2f} s (whole vocabulary) (medians); load {a['load'][0]:.2f} "
                  f"before, {a['load'][1]:.2f} after", flush=True)
            print("    " + verdict(a["ratio"], LENS_TARGET, "lens / faster bare"), flush=True)

    if "b" in args.parts:
        b = bench_attention(lm, args.attn_tokens, args.rounds)
        print(f"(b) forward of {args.attn_tokens} tokens: attention entropy {b['entropy']:.2f} s, eager "
              f"{b['eager']:.2f} s, sdpa {b['sdpa']:.2f} s (medians); load {b['load'][0]:.2f} before, "
              f"{b['load'][1]:.2f} after", flush=True)
        print("    " + verdict(b["vs_eager"], ATTN_EAGER_TARGET, "entropy / eager"))
        print("    " + verdict(b["vs_sdpa"], ATTN_SDPA_TARGET, "entropy / sdpa"), flush=True)

    if "c" in args.parts:
        c = run_probe("bounded", args.memory_tokens, args.memory_lens_every)
        print(f"(c) {args.memory_tokens}-token trace, logit lens (every {args.memory_lens_every}th layer) + attention "
              f"entropy: peak {c['peak_above_model_mb']:.0f} MB above the loaded model "
              f"({c['model_params_mb']:.0f} MB of weights; {c['method']}), {c['seconds']:.1f} s "
              f"(target < {MEMORY_TARGET_MB:.0f} MB) {'OK' if c['peak_above_model_mb'] < MEMORY_TARGET_MB else 'MISSED'}",
              flush=True)

    if "d" in args.parts:
        n = args.naive_tokens
        naive = run_probe("naive", n, 1)
        ours = run_probe("bounded", n, 1)
        print(f"(d) {n} tokens, all 30 layers, both on:  naive (materialise, then reduce) "
              f"{naive['seconds']:.2f} s, peak {naive['peak_above_model_mb']:.0f} MB  |  bounded "
              f"{ours['seconds']:.2f} s, peak {ours['peak_above_model_mb']:.0f} MB")
        t4 = args.memory_tokens
        lens_gb = 30 * t4 * 49152 * 4 / 2**30
        attn_gb = 30 * 9 * t4 * t4 * 4 / 2**30
        print(f"    naive at {t4} tokens would hold {lens_gb:.1f} GiB of lens logits (30 x {t4} x 49,152 float32) "
              f"and {attn_gb:.1f} GiB of attention maps (30 x 9 x {t4}^2), before any temporaries", flush=True)

    if "e" in args.parts:
        print("(e) " + nnsight_check(lm))
    print(f"load average {load():.2f} (1 min) at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
