"""Recording overhead: plain ``model.generate`` vs ``record.generate_batch`` (StepRecorder:
full-vocabulary entropy at T and T=1, chosen-token logprob, top-20 alternatives).

Both arms decode the same prompts (greedy, or sampled with one fixed seed) for exactly the
same number of tokens (``min_new_tokens == max_new_tokens``, set on the model's generation
config so both arms get it), and the repetitions are interleaved A B A B ... so that the
machine's load hits both alike. Reports the median time of each arm and their ratio against
the 1.10 target. The recorded arm's time includes everything ``generate_batch`` does after
decoding (token text pieces, the numpy arrays, the Trace objects).

    PYTHONPATH=. .venv/bin/python bench/bench_record.py --threads 1
    PYTHONPATH=. .venv/bin/python bench/bench_record.py --threads 1 --temperature 0.7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.models import load_model  # noqa: E402
from analysis.record import GenerationSettings, Prompt, build_prompt_ids, generate_batch  # noqa: E402

TARGET = 1.10
PROMPTS = [
    "What is 17 + 25? Think step by step.",
    "A farmer has 12 cows and buys 7 more. How many cows does he have?",
    "What is 9 times 8? Explain your reasoning.",
    "Tom reads 15 pages a day. How many pages does he read in a week?",
]


@torch.inference_mode()
def plain_generate(lm, prompts: list[Prompt], settings: GenerationSettings, seed: int = 0) -> torch.Tensor:
    """The baseline: the same padded batch through model.generate with no processor."""
    tok = lm.tokenizer
    encoded = [build_prompt_ids(lm, p.text, settings) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    if settings.do_sample:  # the same sampler and seed as generate_batch: the same tokens
        kw = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    out = lm.model.generate(input_ids=input_ids, attention_mask=attention,
                            max_new_tokens=settings.max_new_tokens, pad_token_id=pad,
                            return_dict_in_generate=True, **kw)
    return out.sequences[:, width:]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt (forced)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per batch (1..4)")
    ap.add_argument("--repeats", type=int, default=5, help="repetitions of each arm")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="0: greedy (entropy at T=1 only); > 0: sampling with top-p 0.95 and a fixed "
                         "seed, where the recorder computes entropy at T and at T=1")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); 1 is steadier on a shared machine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    lm = load_model()
    print(f"loaded {lm.name} in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}")
    # Forcing the length on the generation config applies it to both arms identically.
    lm.model.generation_config.min_new_tokens = args.tokens
    prompts = [Prompt(p) for p in PROMPTS[: args.prompts]]
    sample = args.temperature > 0
    settings = GenerationSettings(do_sample=sample, temperature=args.temperature if sample else 1.0,
                                  top_p=0.95, max_new_tokens=args.tokens, top_k=args.top_k,
                                  batch_size=len(prompts))

    def run_plain():
        return plain_generate(lm, prompts, settings)

    def run_recorded():
        return generate_batch(lm, prompts, settings, seed=0)

    # warm-up (first calls allocate caches), and a check that both arms decode the same tokens
    new = run_plain()
    traces = run_recorded()
    assert all(t.n_tokens == args.tokens for t in traces), [t.n_tokens for t in traces]
    assert new.shape == (len(prompts), args.tokens), tuple(new.shape)
    same = all(list(map(int, new[b])) == t.token_ids.tolist() for b, t in enumerate(traces))
    mode = f"sampled at T={args.temperature:g}, seed 0" if sample else "greedy"
    print(f"{len(prompts)} prompts x {args.tokens} tokens ({mode}, forced length); "
          f"both arms decode identical tokens: {same}")

    times = {"plain": [], "recorded": []}
    for _ in range(args.repeats):  # interleaved A B A B ...
        for name, fn in (("plain", run_plain), ("recorded", run_recorded)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["recorded"] / med["plain"]
    n_tok = len(prompts) * args.tokens
    for k, v in times.items():
        print(f"  {k:9s} median {med[k]:.3f} s ({n_tok / med[k]:.1f} tokens/s)   runs: "
              + " ".join(f"{x:.3f}" for x in v))
    print(f"  recorded / plain = {ratio:.3f}   target <= {TARGET:.2f}: "
          f"{'OK' if ratio <= TARGET else 'OVER TARGET'}")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
