"""``thinkscope preview FILE``: what the Upload page shows before an import (detected format,
how sure, counts, problems and warnings, the first traces), without storing anything.
Registered in analysis.cli."""

from __future__ import annotations

import sys


def cmd_preview(args) -> int:
    from .cli_common import echo
    from .formats import preview
    field_map = dict(m.split("=", 1) for m in args.map or [])
    lm = None
    if args.score:
        from .models import load_model
        lm = load_model(args.model)
    p = preview(args.file, args.format, n=args.n, field_map=field_map or None, lm=lm, marker=args.marker)
    d = p.detection
    others = ", ".join(f"{k} {v:.2f}" for k, v in sorted(d.resembles.items(), key=lambda kv: -kv[1])
                       if k != d.format)[:200]
    echo(f"{args.file}: format {d.format} (score {d.score:.2f}; {d.container})" + (f"; resembles {others}" if others
                                                                                  else ""))
    if d.note:
        echo(f"  {d.note}")
    count = lambda v: "not counted" if v is None else f"{v:,}"  # noqa: E731
    echo(f"traces: {count(p.n_traces)}, tokens: {count(p.n_tokens)}; fields: {', '.join(p.fields) or '-'}")
    for w in p.warnings:
        echo(f"  warning: {w}", file=sys.stderr)
    for x in p.problems:
        echo(f"  problem: {x}", file=sys.stderr)
    if p.n_problems > len(p.problems):
        echo(f"  ... {p.n_problems - len(p.problems)} more problem(s)", file=sys.stderr)
    for i, t in enumerate(p.traces):
        text = "".join(t.tokens)
        echo(f"-- trace {i + 1}: {t.n_tokens} tokens, estimator {t.estimator}, top-{t.k}; "
             f"prompt: {t.prompt[:80]!r}")
        echo(f"   {text[:args.chars]!r}" + (" ..." if len(text) > args.chars else ""))
    return 1 if p.n_problems else 0


def register(sub) -> None:
    from .formats.detect import FORMATS
    from .settings import THINK_MARKER
    p = sub.add_parser("preview", help="read a trace file without importing it: format, counts, problems, first traces")
    p.add_argument("file")
    p.add_argument("--format", choices=list(FORMATS), help="skip detection: read the file in this format")
    p.add_argument("--map", action="append", metavar="FIELD=NAME", help="as for ingest; repeatable")
    p.add_argument("--marker", default=THINK_MARKER)
    p.add_argument("-n", type=int, default=3, help="traces shown")
    p.add_argument("--chars", type=int, default=160, help="characters of each trace's text shown")
    p.add_argument("--score", action="store_true", help="plain-text traces: score them with --model to count tokens")
    p.add_argument("--model", help="with --score: the local model (default: the embedded one)")
    p.set_defaults(func=cmd_preview)
