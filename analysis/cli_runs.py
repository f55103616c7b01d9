"""CLI commands over stored runs and traces, the Runs page's and the explorer's verbs
(registered in analysis.cli):

    thinkscope show RUN                      # a run's details and settings (JSON)
    thinkscope traces RUN                    # its traces with their sequence entropy by phase
    thinkscope forks RUN TRACE [--window 4] [--method percentile|corpus|fixed] [--value 95]
                               [--lexicon [FILE]] [--estimator best] [--unit nats|bits] [--format table|csv|jsonl]
    thinkscope tokens RUN TRACE [--alternatives 5] # a trace token by token, with its alternatives
    thinkscope layers RUN [--field lens_entropy] [--by trace|difficulty|correct]  # per-layer profiles
    thinkscope anchors RUN TRACE [--layer L] [--raw] [--percent 20]  # anchor / explorer tokens
    thinkscope delete RUN [--yes]            # remove a run and its traces (asks first)
"""

from __future__ import annotations

import csv
import io
import json
import sys

from .errors import ThinkscopeError
from .metrics import UNITS, conditions_text, logprobs_text

FORMATS = ("table", "csv", "jsonl")


def _store(args):
    from .cli_common import open_store
    return open_store(args)


def echo(*parts, file=None) -> None:
    from .cli_common import echo as _echo
    _echo(*parts, file=file)


def _scale(unit: str) -> float:
    from .metrics import unit_scale
    return unit_scale(unit)


def write_rows(df, fmt: str, text_columns=()) -> None:
    """A table on stdout: aligned text, CSV (text cells guarded against spreadsheet formulas)
    or JSON Lines. Control characters in text are shown as escapes in every format."""
    from .cli_common import printable
    if fmt == "jsonl":
        for row in df.to_dict("records"):
            echo(json.dumps(row, ensure_ascii=False, default=float))
    elif fmt == "csv":
        from .formats.thinkscope import csv_text
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(df.columns)
        cols = list(df.columns)
        for row in df.itertuples(index=False):
            w.writerow([csv_text(printable(v)) if c in text_columns and isinstance(v, str) else v
                        for c, v in zip(cols, row)])
        sys.stdout.write(buf.getvalue())
    else:
        out = df.copy()
        for c in text_columns:  # before the layout measures widths
            out[c] = out[c].map(lambda v: v if v is None else printable(v))
        echo(out.to_string(index=False) if len(out) else "(none)")


def cmd_show(args) -> int:
    from .runs import run_info
    r = run_info(_store(args), args.run_id)
    echo(f"run {r.run_id} '{r.name}': {r.n_traces} traces, {r.n_tokens} tokens, status {r.status}, "
         f"source {r.source or '-'}, model {r.model or '-'}")
    echo(logprobs_text(r.settings))
    echo(json.dumps(r.settings, indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_traces(args) -> int:
    from .runs import run_traces
    df = run_traces(_store(args), args.run_id)
    if df.empty:
        echo(f"run {args.run_id} has no traces")
        return 0
    s = _scale(args.unit)
    out = df[["trace_id", "idx", "problem_id", "sample_idx", "level", "correct", "n_tokens", "estimator"]].copy()
    for src, name in (("mean_entropy", "all"), ("mean_entropy_thinking", "thinking"),
                      ("mean_entropy_answer", "answer")):
        out[f"mean_H_{name}_{args.unit}"] = (df[src].astype(float) * s).round(4)
    print(f"sequence entropy = mean token entropy ({args.unit}) of each trace's best estimator, by phase",
          file=sys.stderr if args.format != "table" else sys.stdout)
    write_rows(out, args.format, ("problem_id", "estimator"))
    return 0


def read_lexicon(value: str | None) -> tuple[str, ...] | None:
    """--lexicon: None (not given), '' (the default discourse lexicon) or a file, one entry a line."""
    from pathlib import Path

    from .metrics import DEFAULT_LEXICON
    if value is None:
        return None
    if value == "":
        return tuple(DEFAULT_LEXICON)
    p = Path(value)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ThinkscopeError(f"{p}: no such lexicon file") from None
    except UnicodeDecodeError as e:
        raise ThinkscopeError(f"{p}: not UTF-8 text (byte {e.start})") from None
    entries = tuple(x.strip() for x in text.splitlines() if x.strip())
    if not entries:
        raise ThinkscopeError(f"{p}: the lexicon file has no entries (one per line)")
    return entries


def cmd_forks(args) -> int:
    from .forking import ForkSettings, trace_forks
    s = _scale(args.unit)
    value = args.value
    if value is None:
        value = {"percentile": 95.0, "corpus": 20.0}.get(args.method)
        if value is None:
            raise ThinkscopeError("--method fixed needs --value (tau, in the --unit given)")
    elif args.method == "fixed":
        value = value / s  # tau given in the unit shown; thresholds are in nats
    settings = ForkSettings(args.estimator, args.window, args.method, float(value), read_lexicon(args.lexicon))
    from .runs import run_info
    store = _store(args)
    f = trace_forks(store, args.run_id, args.trace_id, settings)
    how = {"percentile": f"the trace's {value:g}th percentile", "corpus": f"the run's top {value:g}%",
           "fixed": "a fixed value"}[args.method]
    lex = "" if settings.lexicon is None else f"; lexicon tokens only ({f.reaching} positions reach tau)"
    print(f"{len(f.table)} forking points of {f.n_tokens} tokens: window entropy (mean {args.unit} of the next "
          f"{args.window} tokens, estimator {args.estimator}) >= tau = {f.tau * s:.4f} {args.unit} ({how}{lex})\n"
          f"entropies: {conditions_text(args.estimator, run_info(store, args.run_id).settings)}",
          file=sys.stderr if args.format != "table" else sys.stdout)
    t = f.table.rename(columns={"window_entropy": f"window_entropy_{args.unit}",
                                "token_entropy": f"token_entropy_{args.unit}"})
    for c in (f"window_entropy_{args.unit}", f"token_entropy_{args.unit}"):
        t[c] = (t[c] * s).round(4)
    write_rows(t, args.format, ("token", "context"))
    return 0


def cmd_tokens(args) -> int:
    from .runs import trace_tokens
    df = trace_tokens(_store(args), args.run_id, args.trace_id, args.alternatives)
    s = _scale(args.unit)
    hcols = [c for c in df.columns if c.startswith("H_")]
    df[hcols] = (df[hcols] * s).round(4)
    df = df.rename(columns={c: f"{c}_{args.unit}" for c in hcols})
    df["logprob"] = df["logprob"].round(4)
    print(f"token entropies H in {args.unit} per estimator; logprob in nats; alternatives: text (probability)",
          file=sys.stderr if args.format != "table" else sys.stdout)
    write_rows(df, args.format, ("token", "alternatives"))
    return 0


def cmd_layers(args) -> int:
    from .layer_stats import PROFILE_FIELDS, run_profiles
    df = run_profiles(_store(args), args.run_id, args.field, args.by)
    if df.empty:
        echo(f"run {args.run_id}: no traces to compare by {args.by}")
        return 0
    s = 1.0 if args.field == "attn_entropy_norm" else _scale(args.unit)
    unit = "ratio" if args.field == "attn_entropy_norm" else args.unit
    for c in ("mean", "lo", "hi"):
        df[c] = (df[c].astype(float) * s).round(4)
    df = df.rename(columns={"mean": f"mean_{unit}", "lo": f"ci_low_{unit}", "hi": f"ci_high_{unit}", "n": "traces"})
    print(f"{PROFILE_FIELDS[args.field]} per layer ({unit}): each trace's mean over its tokens, then the mean "
          "over the group's traces with a 95% interval (normal, 1.96 standard errors)",
          file=sys.stderr if args.format != "table" else sys.stdout)
    write_rows(df, args.format, ("group",))
    return 0


def cmd_anchors(args) -> int:
    import numpy as np

    from .layer_stats import trace_anchors
    table, name, est = trace_anchors(_store(args), args.run_id, args.trace_id, args.layer, not args.raw, args.percent)
    s = _scale(args.unit)
    a_unit = "ratio" if not args.raw else args.unit
    if args.raw:
        table["attention"] = table["attention"] * s
    table["token_entropy"] = table["token_entropy"] * s
    say = (lambda *p: echo(*p, file=sys.stderr)) if args.format != "table" else echo
    say(f"{name} in {a_unit}: anchors at or below its {args.percent:g}th percentile, explorers at or above the "
        f"{100 - args.percent:g}th (arXiv 2605.07660)")
    for g in ("anchor", "middle", "explorer"):
        sel = table["group"] == g
        v = float(np.nanmean(table.loc[sel, "token_entropy"])) if sel.any() else float("nan")
        say(f"{ {'anchor': 'anchors', 'middle': 'middle', 'explorer': 'explorers'}[g]}: {int(sel.sum())} tokens, "
            "mean token entropy "
            + ("n/a" if v != v else f"{v:.4f} {args.unit}") + f" ({est})")
    if args.all:
        out = table
    else:
        out = table[table["group"].isin(["anchor", "explorer"])].sort_values(["group", "attention"])
    out = out.rename(columns={"attention": f"attention_{a_unit}", "token_entropy": f"token_entropy_{args.unit}"})
    write_rows(out.round(4), args.format, ("token",))
    return 0


def cmd_delete(args) -> int:
    from .runs import delete_run, run_info
    store = _store(args)
    r = run_info(store, args.run_id)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ThinkscopeError(f"delete run {r.run_id}: not confirmed (no terminal to ask on); add --yes")
        echo(f"delete run {r.run_id} '{r.name}' ({r.n_traces} traces, {r.n_tokens} tokens) from {store.path}? [y/N] ",
             file=sys.stderr)
        if input().strip().lower() not in ("y", "yes"):
            echo("nothing deleted", file=sys.stderr)
            return 1
    delete_run(store, r.run_id)
    echo(f"run {r.run_id} '{r.name}' deleted: {r.n_traces} traces, {r.n_tokens} tokens")
    return 0


def register(sub) -> None:
    s = sub.add_parser("show", help="a run's details and settings")
    s.add_argument("run_id", type=int)
    s.set_defaults(func=cmd_show)

    t = sub.add_parser("traces", help="the traces of a run with their sequence entropy by phase")
    t.add_argument("run_id", type=int)
    t.add_argument("--unit", choices=list(UNITS), default="nats")
    t.add_argument("--format", choices=FORMATS, default="table")
    t.set_defaults(func=cmd_traces)

    f = sub.add_parser("forks", help="the forking points of a trace, with their context")
    f.add_argument("run_id", type=int)
    f.add_argument("trace_id", type=int)
    f.add_argument("--window", "-w", type=int, default=4, help="window w: mean entropy of the next w tokens")
    f.add_argument("--method", choices=["percentile", "corpus", "fixed"], default="percentile",
                   help="tau: the trace's percentile (ARES), the run's top %% (80/20 rule) or a fixed value")
    f.add_argument("--value", type=float, help="the percentile (default 95), the top %% (default 20) or, with "
                                               "--method fixed, tau in --unit")
    f.add_argument("--lexicon", nargs="?", const="", metavar="FILE",
                   help="only tokens of a lexicon: the default discourse words, or FILE (one entry a line)")
    f.add_argument("--estimator", default="best", help="best (each trace's own), full, full_t1, topk_renorm, ...")
    f.add_argument("--unit", choices=list(UNITS), default="nats")
    f.add_argument("--format", choices=FORMATS, default="table", help="table, csv or jsonl on stdout")
    f.set_defaults(func=cmd_forks)

    k = sub.add_parser("tokens", help="a trace token by token: logprob, entropy per estimator, alternatives")
    k.add_argument("run_id", type=int)
    k.add_argument("trace_id", type=int)
    k.add_argument("--alternatives", type=int, default=5, metavar="N", help="top-k alternatives shown per token")
    k.add_argument("--unit", choices=list(UNITS), default="nats")
    k.add_argument("--format", choices=FORMATS, default="table")
    k.set_defaults(func=cmd_tokens)

    y = sub.add_parser("layers", help="per-layer entropy profiles of a run (logit lens, attention), by trace, "
                                      "difficulty or correctness")
    y.add_argument("run_id", type=int)
    y.add_argument("--field", choices=["lens_entropy", "attn_entropy", "attn_entropy_norm"], default="lens_entropy")
    y.add_argument("--by", choices=["trace", "difficulty", "correct"], default="trace")
    y.add_argument("--unit", choices=list(UNITS), default="nats")
    y.add_argument("--format", choices=FORMATS, default="table")
    y.set_defaults(func=cmd_layers)

    a = sub.add_parser("anchors", help="a trace's anchor and explorer tokens by attention entropy")
    a.add_argument("run_id", type=int)
    a.add_argument("trace_id", type=int)
    a.add_argument("--layer", type=int, help="the (1-based) layer; default: the mean over layers")
    a.add_argument("--raw", action="store_true", help="attention entropy not divided by ln(visible positions)")
    a.add_argument("--percent", type=float, default=20.0, help="anchors <= this percentile, explorers >= 100 - it")
    a.add_argument("--all", action="store_true", help="every token, not only the anchors and explorers")
    a.add_argument("--unit", choices=list(UNITS), default="nats")
    a.add_argument("--format", choices=FORMATS, default="table")
    a.set_defaults(func=cmd_anchors)

    d = sub.add_parser("delete", help="remove a run and all its traces from the store")
    d.add_argument("run_id", type=int)
    d.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    d.set_defaults(func=cmd_delete)
