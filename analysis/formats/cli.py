"""``thinkscope ingest FILE...``: import trace files as runs (three lines over ``ingest_files``)."""

from __future__ import annotations

import sys

from ..settings import THINK_MARKER
from .detect import FORMATS


#: files smaller than this (bytes) are read in one go: their bar shows no rate, which would be
#: the rate of one read call, not of the import
RATE_MIN_BYTES = 8 << 20


def _bytes_bar():
    """A tqdm bar per file, driven by (file name, bytes done, bytes total) callbacks: bytes read
    in binary units, and a rate only for files large enough to be read in many steps."""
    from tqdm import tqdm

    from ..cli_common import printable
    bars: dict[str, tqdm] = {}

    def update(name: str, done: int, total: int) -> None:
        bar = bars.get(name)
        if bar is None:
            fmt = None if total >= RATE_MIN_BYTES else "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B"
            bar = bars[name] = tqdm(total=total, desc=printable(name[-30:]), unit="B", unit_scale=True,
                                    unit_divisor=1024, bar_format=fmt, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def cmd_ingest(args) -> int:
    from ..cli_common import echo, open_store
    from .ingest import ingest_files

    store = open_store(args)
    field_map = dict(m.split("=", 1) for m in args.map or [])
    results = ingest_files(store, args.files, format=args.format, run_name=args.run_name,
                           progress=_bytes_bar(), model=args.model, field_map=field_map or None,
                           marker=args.marker)
    from ..cli_signals import tag_from_args
    for r in results:
        tag_from_args(store, r.run_id, args)  # --checkpoint-step
        echo(f"run {r.run_id} '{r.name}': {r.n_traces} traces, {r.n_tokens} tokens ({r.format}) "
             f"in {r.seconds:.1f} s")
        for w in r.warnings:
            echo(f"  warning: {w}", file=sys.stderr)
    store.warnings.clear()  # shown with their import above
    return 0


def register(sub) -> None:
    p = sub.add_parser("ingest", help="import trace files (OpenAI, vLLM, SGLang, llama.cpp, Ollama dumps, "
                                      "token tables, plain text, thinkscope exports) as runs")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--format", choices=list(FORMATS), help="skip detection: read every file in this format")
    p.add_argument("--run-name", help="name of the new run (default: the file name)")
    p.add_argument("--model", help="the model that produced the traces (stored with the run); for plain-text "
                                   "traces, the local model that scores them (default: the embedded one)")
    p.add_argument("--marker", default=THINK_MARKER, help=f"end-of-thinking marker (default: {THINK_MARKER})")
    p.add_argument("--map", action="append", metavar="FIELD=NAME",
                   help="read metadata FIELD (problem_id, gold_answer, level, correct, ...) or a table's column "
                        "role (trace, pos, token, logprob) from the file's field NAME; repeatable")
    from ..cli_signals import add_checkpoint_flag
    add_checkpoint_flag(p)
    p.set_defaults(func=cmd_ingest)
