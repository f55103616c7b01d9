"""CLI commands for signals and comparisons (registered in analysis.cli).

    thinkscope signals RUN [--resamples 1000] [--out signals.csv] [--traces-out per_trace.parquet]
    thinkscope token-entropy RUN [RUN2 ...] [--out top_tokens.csv] [--hist-out hist.csv]
    thinkscope rescore RUN --model M [--temperature T] [--run-name NAME] [--checkpoint-step N]
    thinkscope compare RUN_A RUN_B [--out positions.parquet] [--bins-out bins.csv]
    thinkscope checkpoint RUN --step N | --clear
    thinkscope checkpoints [RUN ...] [--out series.csv]

Every table goes to CSV or Parquet (the suffix picks); CSV cells that a spreadsheet would
evaluate get a leading ' (as in exports).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from .errors import ThinkscopeError
from .settings import TOP_K


def _store(args):
    from .cli_common import open_store
    return open_store(args)


def echo(*parts, file=None) -> None:
    from .cli_common import echo as _echo
    _echo(*parts, file=file)


def write_table(df: pd.DataFrame, path: str) -> Path:
    """Write ``df`` as CSV or Parquet by the file's suffix; one-line errors for the rest."""
    from .formats.thinkscope import csv_text
    from .store import one_line

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ThinkscopeError(f"{path}: unknown table format {suffix or '(none)'!r}; use .csv or .parquet")
    try:
        if suffix == ".csv":
            out = df.copy()
            for c in out.columns:
                if out[c].dtype == object:
                    out[c] = out[c].map(lambda v: csv_text(v) if isinstance(v, str) else v)
            out.to_csv(p, index=False)
        else:
            df.to_parquet(p, index=False)
    except OSError as e:
        raise ThinkscopeError(f"{path}: cannot write the table: {e.strerror or one_line(e)}") from e
    return p


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def tag_from_args(store, run_id: int, args) -> None:
    """``--checkpoint-step`` of ingest: record the step with a new run."""
    step = getattr(args, "checkpoint_step", None)
    if step is not None:
        from .compare import tag_checkpoint
        tag_checkpoint(store, run_id, step)


def tag_runs_created(store, args) -> None:
    """``--checkpoint-step`` of generate: every run this command creates in ``store`` gets the step in
    its settings as it is created, whichever way it generates (local, graded, early-stopped,
    through a server)."""
    step = getattr(args, "checkpoint_step", None)
    if step is None:
        return
    from .compare import CHECKPOINT_KEY
    create = store.create_run

    def create_run(name, source, model=None, settings=None, *a, **kw):
        return create(name, source, model, {**(settings or {}), CHECKPOINT_KEY: float(step)}, *a, **kw)

    store.create_run = create_run


def add_checkpoint_flag(parser) -> None:
    parser.add_argument("--checkpoint-step", type=float, metavar="N",
                        help="training step of the model's checkpoint, recorded with the run "
                             "(runs with steps form a series: thinkscope checkpoints)")


# --------------------------------------------------------------------------- commands


def signal_table(ev) -> pd.DataFrame:
    """The ranked evaluation as written to a file: named columns with their quantities."""
    t = ev.table
    return pd.DataFrame({
        "rank": range(1, len(t) + 1), "signal": t["signal"], "description": t["label"], "unit": t["unit"],
        "level": t["level"], "direction": t["direction"], "n_traces": t["n"], "n_wrong": t["n_wrong"],
        "auroc_wrong": t["auroc"], "auroc_ci95_low": t["auroc_low"], "auroc_ci95_high": t["auroc_high"],
        "auprc_wrong": t["auprc"], "auprc_ci95_low": t["auprc_low"], "auprc_ci95_high": t["auprc_high"],
        "auprc_chance": t["auprc_chance"], "bootstrap_resamples": t["resamples"], "verdict": t["verdict"]})


def cmd_signals(args) -> int:
    from . import run_signals as rsm
    store = _store(args)
    rs = rsm.run_signals(store, args.run_id)
    ev = rsm.evaluate_run(rs, args.resamples, args.seed)
    unit = "problems" if ev.by_problem else "traces"
    echo(f"run {args.run_id}: {ev.n} graded traces ({ev.n_wrong} wrong), {ev.n_groups} {unit} resampled "
         f"{ev.resamples} times; AUROC and AUPRC for 'wrong', 95% bootstrap percentile intervals")
    for note in ev.notes:
        echo(f"  note: {note}")
    echo("a trace where a signal is undefined (no answer part, no logprobs) is left out of that signal: "
         "n is the number of traces it is judged on")
    echo(f"{'rank':>4}  {'signal':<28} {'n':>5} {'wrong':>5} {'AUROC':>6} {'95% CI':>15}  {'AUPRC':>6} "
         f"{'(chance)':>8}  verdict")
    for i, r in enumerate(ev.table.itertuples(), 1):
        ci = f"[{_fmt(r.auroc_low)}, {_fmt(r.auroc_high)}]"
        echo(f"{i:>4}  {r.signal:<28} {r.n:>5} {r.n_wrong:>5} {_fmt(r.auroc):>6} {ci:>15}  {_fmt(r.auprc):>6} "
             f"{_fmt(r.auprc_chance):>8}  {r.verdict}")
    beat = ev.table.loc[ev.table["verdict"] == "better than chance", "signal"].tolist()
    echo(f"better than chance on this run (interval above 0.5): {', '.join(beat) if beat else 'none'}")
    if args.calibrate:
        if args.calibrate not in rs.specs:
            raise ThinkscopeError(f"--calibrate {args.calibrate!r}: no such signal; known: {', '.join(rs.specs)}")
        c = rsm.calibrate_signal(rs, args.calibrate, args.calib_fraction, args.seed)
        echo(f"calibration of {args.calibrate}: P(correct) = sigmoid({c.a:.4f} + {c.b:.4f} x) fitted on "
             f"{c.n_calib} traces; ECE on {c.n_held} held-out traces {c.ece:.4f} (10 equal-width bins)")
        if args.calib_out:
            echo(f"-> {write_table(c.bins.assign(signal=args.calibrate, a=c.a, b=c.b, ece=c.ece), args.calib_out)}")
    if args.roc_out:
        echo(f"-> {write_table(rsm.roc_table(rs), args.roc_out)}")
    if args.out:
        echo(f"-> {write_table(signal_table(ev), args.out)}")
    if args.traces_out:
        echo(f"-> {write_table(rs.frame, args.traces_out)}")
    return 0


def cmd_token_entropy(args) -> int:
    from .compare import LOW_ENTROPY, run_token_entropy_profile
    store = _store(args)
    tops, hists = [], []
    for rid in args.run_ids:
        p = run_token_entropy_profile(store, rid, args.estimator, n_top=args.top)
        echo(f"run {rid}: {p.n_tokens} tokens ({p.estimator}); share with H < {LOW_ENTROPY} nats "
             f"{100 * p.share_below:.1f}%; 80th percentile {p.p80:.4f} nats; median {p.median:.4f} nats")
        words = ", ".join(f"{t} ({c})" for t, c in zip(p.top_tokens["token"].head(10), p.top_tokens["count_top"]))
        echo(f"  most often in the top 20% (count): {words}")
        tops.append(p.top_tokens.assign(run_id=rid, estimator=p.estimator))
        hists.append(p.hist.assign(run_id=rid, estimator=p.estimator))
    if args.out:
        echo(f"-> {write_table(pd.concat(tops, ignore_index=True), args.out)}")
    if args.hist_out:
        echo(f"-> {write_table(pd.concat(hists, ignore_index=True), args.hist_out)}")
    return 0


def cmd_rescore(args) -> int:
    from .cli_common import progress_bar as _progress_bar
    from .compare import rescore_run
    from .models import load_model
    store = _store(args)
    print(f"loading model {args.model or 'embedded default'} ...", file=sys.stderr)
    lm = load_model(args.model)
    res = rescore_run(store, args.run_id, lm, args.run_name, args.temperature, args.top_k,
                      checkpoint_step=args.checkpoint_step, progress=_progress_bar("re-scoring"))
    echo(f"run {res.run_id}: run {res.source_run} re-scored by {lm.name}: {res.n_traces} traces, {res.n_tokens} "
         f"tokens in {res.seconds:.1f} s ({res.same_tokens} on the original token ids, {res.retokenised} "
         "tokenised anew)")
    for n in res.notes:
        echo(f"  note: {n}")
    return 0


def cmd_compare(args) -> int:
    from .compare import compare_positions
    c = compare_positions(_store(args), args.run_a, args.run_b, args.estimator)
    echo(f"runs {c.run_a} (A) and {c.run_b} (B) on the same text: {c.pairs} trace pairs, {len(c.positions)} "
         f"positions compared ({100 * c.aligned_share:.1f}% of A's); token entropy ({args.estimator}, nats)")
    echo(f"  mean H_A {_fmt(c.positions['h_a'].mean(), 4)}, mean H_B {_fmt(c.positions['h_b'].mean(), 4)}, "
         f"mean H_B - H_A {_fmt(c.positions['diff'].mean(), 4)}, Pearson r {_fmt(c.correlation)}")
    echo(f"  overlap of the top-20% positions: {100 * c.overlap_top:.1f}% of A's (thresholds "
         f"{c.threshold_a:.4f} / {c.threshold_b:.4f} nats)")
    for n in c.notes:
        echo(f"  note: {n}")
    echo("  A's entropy percentile   count   mean H_A   mean H_B   mean change")
    for r in c.binned.itertuples():
        echo(f"  {r.percentile:>22} {r.count:>7} {r.mean_h_a:>10.4f} {r.mean_h_b:>10.4f} {r.mean_diff:>+13.4f}")
    if args.out:
        echo(f"-> {write_table(c.positions, args.out)}")
    if args.bins_out:
        echo(f"-> {write_table(c.binned, args.bins_out)}")
    return 0


def cmd_checkpoint(args) -> int:
    from .compare import tag_checkpoint
    store = _store(args)
    if store.runs().query("run_id == @args.run_id").empty:
        raise ThinkscopeError(f"no run {args.run_id} in {store.path}")
    tag_checkpoint(store, args.run_id, None if args.clear else args.step)
    echo(f"run {args.run_id}: " + ("checkpoint step removed" if args.clear else f"checkpoint step {args.step:g}"))
    return 0


def cmd_checkpoints(args) -> int:
    from .compare import checkpoint_series
    s = checkpoint_series(_store(args), args.run_ids or None, args.estimator)
    echo(f"checkpoint series: mean token entropy ({s.estimator}, nats, over every token of the run), accuracy "
         f"(% of graded, 95% Wilson interval), share of tokens with H ≥ {s.high_threshold:.4f} nats (the first "
         "step's top 20%)")
    echo("    step  run   tokens  mean H   change   accuracy (95% CI)        high-H share")
    for r in s.table.itertuples():
        acc = ("n/a" if math.isnan(r.accuracy) else
               f"{100 * r.accuracy:5.1f}% [{100 * r.acc_low:.1f}, {100 * r.acc_high:.1f}]")
        echo(f"{r.step:>8g} {r.run_id:>4} {r.n_tokens:>8} {r.mean_entropy:>7.4f} {r.entropy_change_pct:>+7.1f}%   "
             f"{acc:<24} {100 * r.high_share:.1f}%")
    if s.fit is not None:
        f = s.fit
        ci = (lambda lo, hi: "" if lo is None else f" [{lo:.4f}, {hi:.4f}]")
        echo(f"fit accuracy = -a exp(H) + b over {f.n} checkpoints: a = {f.a:.4f}{ci(f.a_low, f.a_high)}, "
             f"b = {f.b:.4f}{ci(f.b_low, f.b_high)} (95% t-intervals), R² {_fmt(f.r2)}")
    for n in s.notes:
        echo(f"  note: {n}")
    if args.out:
        echo(f"-> {write_table(s.table, args.out)}")
    return 0


def register(sub) -> None:
    s = sub.add_parser("signals", help="AUROC/AUPRC of every entropy and sample signal for wrong answers of a graded run")
    s.add_argument("run_id", type=int)
    s.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--calibrate", metavar="SIGNAL", help="fit P(correct) = sigmoid(a + b x) of this signal "
                                                         "on a calibration split and report the held-out ECE")
    s.add_argument("--calib-fraction", type=float, default=0.5, help="share of problems in the calibration split")
    s.add_argument("--out", help="the ranked signal table (.csv or .parquet)")
    s.add_argument("--traces-out", help="every trace's signal values (.csv or .parquet)")
    s.add_argument("--roc-out", help="every signal's ROC curve points (.csv or .parquet)")
    s.add_argument("--calib-out", help="with --calibrate: the reliability diagram's bins (.csv or .parquet)")
    s.set_defaults(func=cmd_signals)

    t = sub.add_parser("token-entropy", help="token-entropy distribution and the tokens most often in the top 20%% "
                                             "(Beyond the 80/20 rule)")
    t.add_argument("run_ids", type=int, nargs="+")
    t.add_argument("--estimator", default="best")
    t.add_argument("--top", type=int, default=30, help="tokens listed")
    t.add_argument("--out", help="top-token table (.csv or .parquet)")
    t.add_argument("--hist-out", help="log-spaced histogram table (.csv or .parquet)")
    t.set_defaults(func=cmd_token_entropy)

    r = sub.add_parser("rescore", help="score a stored run's tokens with another model (teacher forcing) as a new run")
    r.add_argument("run_id", type=int)
    r.add_argument("--model", help="model folder, .gguf file or cached hub id (default: embedded SmolLM2-135M-Instruct)")
    r.add_argument("--temperature", type=float, help="default: the original run's sampling temperature")
    r.add_argument("--top-k", type=int, default=TOP_K, help="alternatives recorded per token")
    r.add_argument("--run-name")
    add_checkpoint_flag(r)
    r.set_defaults(func=cmd_rescore)

    c = sub.add_parser("compare", help="token entropy of two runs on the same text, position by position")
    c.add_argument("run_a", type=int)
    c.add_argument("run_b", type=int)
    c.add_argument("--estimator", default="best")
    c.add_argument("--out", help="per-position table (.csv or .parquet)")
    c.add_argument("--bins-out", help="change binned by A's entropy percentile (.csv or .parquet)")
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("checkpoint", help="tag a run with the training step of its model's checkpoint")
    k.add_argument("run_id", type=int)
    g = k.add_mutually_exclusive_group(required=True)
    g.add_argument("--step", type=float)
    g.add_argument("--clear", action="store_true")
    k.set_defaults(func=cmd_checkpoint)

    ks = sub.add_parser("checkpoints", help="entropy and accuracy along the tagged checkpoints, with R = -a exp(H) + b")
    ks.add_argument("run_ids", type=int, nargs="*", help="default: every tagged run")
    ks.add_argument("--estimator", default="best")
    ks.add_argument("--out", help="series table (.csv or .parquet)")
    ks.set_defaults(func=cmd_checkpoints)
