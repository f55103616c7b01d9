"""Regenerate the demo traces shipped in data/demo/ with the embedded model.

    python data/make_demo.py            # about 4 minutes on 2 CPU cores

Generates the bundled problem set (8 problems at each of 6 levels, seed 0) with the
embedded SmolLM2-135M-Instruct, grades each answer, and exports the run as Parquet.
A second, smaller run (one problem per level) also records the logit-lens entropy of
every layer and the attention entropy, for the Layers page.

    python data/make_demo.py --only layers   # just the second run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.export import export_run  # noqa: E402
from analysis.models import load_model  # noqa: E402
from analysis.problems import ANSWER_CUE, generate_problem_set  # noqa: E402
from analysis.record import GenerationSettings, record_run  # noqa: E402
from analysis.store import Store  # noqa: E402
from analysis.cli import _progress_bar  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-level", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "demo" / "demo_smollm2.parquet"))
    ap.add_argument("--layers-out",
                    default=str(Path(__file__).resolve().parent / "demo" / "demo_smollm2_layers.parquet"))
    ap.add_argument("--only", choices=["main", "layers"])
    args = ap.parse_args()
    lm = load_model()
    settings = GenerationSettings(temperature=0.7, top_p=0.95, max_new_tokens=args.max_tokens, seed=0,
                                  samples=1, top_k=20, batch_size=8, marker=ANSWER_CUE)
    problems = generate_problem_set(per_level=args.per_level, seed=0)
    prompts = [p.to_prompt() for p in problems]
    on_traces = None
    try:
        from analysis.grading import grade_traces  # graded when grading is available
        on_traces = grade_traces
    except ImportError:
        pass
    jobs = []
    if args.only in (None, "main"):
        jobs.append((prompts, settings, "demo · SmolLM2-135M-Instruct · arithmetic levels 1-6", args.out))
    if args.only in (None, "layers"):
        first_of_level = [p.to_prompt() for p in problems if p.problem_id.endswith("-000")]
        layer_settings = GenerationSettings(temperature=0.7, top_p=0.95, max_new_tokens=128, seed=0,
                                            samples=1, top_k=20, batch_size=6, marker=ANSWER_CUE,
                                            logit_lens=True, attention_entropy=True)
        jobs.append((first_of_level, layer_settings,
                     "demo · SmolLM2-135M-Instruct · layers (logit lens, attention entropy)", args.layers_out))
    for job_prompts, job_settings, name, out in jobs:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "demo.duckdb")
            res = record_run(store, lm, job_prompts, job_settings, name, source="demo",
                             progress=_progress_bar("demo"), on_traces=on_traces)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            export_run(store, res.run_id, out)
        print(f"{res.n_traces} traces, {res.n_tokens} tokens -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
