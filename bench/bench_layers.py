"""Layer-recording benchmark on the embedded SmolLM2-135M (30 layers, 9 heads, vocabulary 49,152).

In one run it prints:

(a) logit lens / bare unembedding: ``lens_entropy_rows`` over the residual rows of all 30
    layers of a ``--lens-tokens`` sequence, against the bare matrix products it needs
    (the same chunks of rows times the unembedding, into a preallocated buffer; the final
    norm is left out of the bare side). Target <= 1.25.
(b) attention entropy forward / eager forward: a whole model forward of ``--attn-tokens``
    tokens with the entropy-recording attention against the same forward with eager
    attention (sdpa shown for reference). Target <= 1.30.
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

Timings are medians of ``--repeats`` interleaved runs, so machine noise hits both sides alike.

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

LENS_TARGET = 1.25
ATTN_TARGET = 1.30
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


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, runs interleaved (one warm-up each first)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


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


def bench_lens(lm, tokens: int, repeats: int) -> dict:
    parts = L.find_lens_parts(lm.model)
    rows = residual_rows(lm.model, parts, tokens)
    with torch.inference_mode():
        normed = parts.norm(rows)
    vocab = parts.weight.shape[0]
    chunk = max(16, L.LENS_CHUNK_BYTES // (4 * vocab))
    zbuf = torch.empty(chunk, vocab)
    wt = parts.weight.T

    def bare():
        with torch.inference_mode():
            for s in range(0, normed.shape[0], chunk):
                x = normed[s: s + chunk]
                torch.matmul(x, wt, out=zbuf[: x.shape[0]])

    def lens():
        with torch.inference_mode():
            L.lens_entropy_rows(rows, parts, chunk)

    t = interleaved({"bare": bare, "lens": lens}, repeats)
    return {"rows": int(rows.shape[0]), "chunk": chunk, **t, "ratio": t["lens"] / t["bare"]}


def bench_attention(lm, tokens: int, repeats: int) -> dict:
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

    t = interleaved({"eager": forward("eager"), "entropy": entropy, "sdpa": forward("sdpa")}, repeats)
    return {**t, "ratio": t["entropy"] / t["eager"]}


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
    ap.add_argument("--lens-tokens", type=int, default=128)
    ap.add_argument("--attn-tokens", type=int, default=1024)
    ap.add_argument("--memory-tokens", type=int, default=4096)
    ap.add_argument("--memory-lens-every", type=int, default=10)
    ap.add_argument("--naive-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe", choices=["bounded", "naive"], help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--lens-every", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.tokens, args.lens_every)))
        return 0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    lm = load_model()
    torch.manual_seed(0)

    a = bench_lens(lm, args.lens_tokens, args.repeats)
    print(f"(a) logit lens, 30 layers x {args.lens_tokens} tokens = {a['rows']} rows, chunks of {a['chunk']}: "
          f"lens {a['lens']:.2f} s / bare unembedding matmul {a['bare']:.2f} s = {a['ratio']:.2f} "
          f"(target <= {LENS_TARGET}) {'OK' if a['ratio'] <= LENS_TARGET else 'MISSED'}")

    b = bench_attention(lm, args.attn_tokens, args.repeats)
    print(f"(b) forward of {args.attn_tokens} tokens: attention entropy {b['entropy']:.2f} s / eager "
          f"{b['eager']:.2f} s = {b['ratio']:.2f} (target <= {ATTN_TARGET}) "
          f"{'OK' if b['ratio'] <= ATTN_TARGET else 'MISSED'}; sdpa without entropy {b['sdpa']:.2f} s")

    c = run_probe("bounded", args.memory_tokens, args.memory_lens_every)
    print(f"(c) {args.memory_tokens}-token trace, logit lens (every {args.memory_lens_every}th layer) + attention "
          f"entropy: peak {c['peak_above_model_mb']:.0f} MB above the loaded model "
          f"({c['model_params_mb']:.0f} MB of weights; {c['method']}), {c['seconds']:.1f} s "
          f"(target < {MEMORY_TARGET_MB:.0f} MB) {'OK' if c['peak_above_model_mb'] < MEMORY_TARGET_MB else 'MISSED'}")

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
          f"and {attn_gb:.1f} GiB of attention maps (30 x 9 x {t4}^2), before any temporaries")

    print("(e) " + nnsight_check(lm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
