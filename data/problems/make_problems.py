"""Write the bundled problem set, and optionally measure a model's pass rate per level.

    python data/problems/make_problems.py                    # writes data/problems/arithmetic.jsonl
    python data/problems/make_problems.py --measure          # + pass rate of the embedded model
        [--per-level 20] [--samples 2] [--max-tokens 160]     # (minutes on 2 CPU cores)

The set is ``analysis.problems.generate_problem_set(per_level, seed)``: arithmetic and word
problems at levels 1 (easiest) .. 6 (hardest), each with an integer gold answer. The pass
rate is measured with the same prompt (question + the 'Final answer:' instruction), sampling
settings and grading (``analysis.grading``) as ``thinkscope generate --problems arithmetic``.

Measured 2026-11-23 (``--measure --samples 2 --max-tokens 160``, T = 0.7, 96 problems x 2,
auto grading; 0 of 192 ungraded):

    level  question shape                        pass rate
      1    a * 1                                 59%  (19/32)
      2    a + b, a, b in 1..4                   59%  (19/32)
      3    a + b, single digits                  44%  (14/32)
      4    two-digit + or -                       9%   (3/32)
      5    word problem a + b - c                 3%   (1/32)
      6    word problem boxes * per - lost        3%   (1/32)

The model rambles under the step-by-step instruction even on a * 1, so about 60% is the
ceiling on this model; levels 4-6 are mostly wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from analysis.problems import BUNDLED_SEED, BUNDLED_PER_LEVEL, generate_problem_set, write_problems  # noqa: E402

HERE = Path(__file__).resolve().parent


def measure(problems, samples: int, max_tokens: int, temperature: float, out: Path | None) -> None:
    """Generate ``samples`` completions per problem, grade them and print the pass rate per level.

    Batches mix the levels (a seeded shuffle) and every graded sample is appended to ``out``
    as it finishes, so an interrupted measurement still gives a figure for every level.
    """
    import random

    import pandas as pd
    import torch

    from analysis.grading import grade_traces, pass_rates
    from analysis.models import load_model
    from analysis.problems import ANSWER_CUE
    from analysis.record import GenerationSettings, iter_generate

    torch.set_num_threads(1)  # polite on shared machines
    lm = load_model()
    settings = GenerationSettings(temperature=temperature, max_new_tokens=max_tokens, samples=samples,
                                  top_k=0, batch_size=16, marker=ANSWER_CUE, seed=0)
    prompts = [p.to_prompt() for p in problems]
    random.Random(0).shuffle(prompts)
    rows = []
    for traces in iter_generate(lm, prompts, settings):
        grade_traces(traces)
        for t in traces:
            rows.append({k: t.metadata.get(k) for k in ("problem_id", "level", "correct", "pred_answer",
                                                        "gold_answer")}
                        | {"n_tokens": t.n_tokens, "completion": t.completion})
        if out:
            pd.DataFrame(rows).to_csv(out, index=False)
        print(f"{len(rows)}/{len(prompts) * samples}", file=sys.stderr, flush=True)
    table = pass_rates(pd.DataFrame(rows), "level")
    print(f"model {lm.name}, T={temperature}, {samples} sample(s) per problem, max {max_tokens} new tokens")
    print(table.to_string(index=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-level", type=int, default=BUNDLED_PER_LEVEL)
    ap.add_argument("--seed", type=int, default=BUNDLED_SEED)
    ap.add_argument("--out", default=str(HERE / "arithmetic.jsonl"))
    ap.add_argument("--measure", action="store_true", help="measure the embedded model's pass rate per level")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--measure-out", help="CSV of every graded sample")
    args = ap.parse_args()
    problems = generate_problem_set(per_level=args.per_level, seed=args.seed)
    write_problems(problems, args.out)
    print(f"{len(problems)} problems -> {args.out}", file=sys.stderr)
    if args.measure:
        measure(problems, args.samples, args.max_tokens, args.temperature,
                Path(args.measure_out) if args.measure_out else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
