"""CLI commands for grading, difficulty and early stopping (registered in analysis.cli).

    thinkscope grade RUN [--rule auto|boxed|hash|...] [--regex R] [--rel-tol x] [--abs-tol x]
    thinkscope difficulty RUN [RUN2] [--axis level|pass_rate] [--estimator full] [--phase all]
    thinkscope calibrate RUN --out CONFIG.json [--mode streaming|gate] [--n-calib N] [--use tau_info]
                             [--answer-cue TEXT] [--answer-tokens 12]

and the graded / early-stopped generation that ``thinkscope generate --problems SET
[--early-stop CONFIG]`` runs (``generate_graded``).
"""

from __future__ import annotations

from .errors import ThinkscopeError
from .metrics import conditions_text


def _store(args):
    from .cli_common import open_store
    return open_store(args)


def echo(*parts, file=None) -> None:
    from .cli_common import echo as _echo
    _echo(*parts, file=file)


MC_INSTRUCTION = "Think step by step, then write 'Final answer:' followed by the letter of your choice."


def problem_prompts(set_name: str) -> list:
    """Prompts for a bundled set or a problem file (every problem needs a gold answer); multiple
    choice problems ask for a letter, the others for the answer after 'Final answer:'."""
    from .grading import is_choice
    from .problems import INSTRUCTION, load_problem_set
    return [p.to_prompt(MC_INSTRUCTION if is_choice(p.gold_answer) else INSTRUCTION)
            for p in load_problem_set(set_name)]


def generate_graded(args, store, lm, prompts, settings, name: str, progress) -> int:
    """Generate (with early stopping when ``args.early_stop`` names a config), grade every
    trace, store pass rates per level in the run's settings and print them."""
    import pandas as pd

    from .grading import GradingRule, grade_traces, pass_rates
    from .record import record_run

    rule = GradingRule(getattr(args, "grade_rule", None) or "auto", getattr(args, "grade_regex", None))
    graded = args.problems is not None
    on_traces = (lambda ts: grade_traces(ts, rule)) if graded else None
    rows: list[dict] = []

    def collect(traces):
        if on_traces:
            on_traces(traces)
        rows.extend({"level": t.metadata.get("level"), "correct": t.metadata.get("correct"),
                     "early": "early_stop" in t.metadata} for t in traces)

    try:
        if args.early_stop:
            from .early_stop import load_config
            from .stopping import record_run_early_stop
            cfg = load_config(args.early_stop)
            res, summary = record_run_early_stop(store, lm, prompts, settings, name, cfg, on_traces=collect,
                                                 progress=progress)
        else:
            res, summary = record_run(store, lm, prompts, settings, name, progress=progress,
                                      on_traces=collect), None
    except KeyboardInterrupt as e:
        from .cli_common import interrupted
        return interrupted(e)
    echo(f"run {res.run_id}: {res.n_traces} traces, {res.n_tokens} tokens in {res.seconds:.1f} s -> {store.path}")
    if summary:
        echo(f"early stop: {summary['stopped_early']} of {summary['traces']} traces stopped; "
              f"{summary['budget_saved']} of {summary['budget']} budget tokens left unused "
              "(an upper bound on tokens saved; compare with a run without --early-stop for the real saving)")
        if summary.get("warning"):
            echo(f"warning: {summary['warning']}")
    if graded and rows:
        df = pd.DataFrame(rows)
        table = pass_rates(df.assign(level=df["level"].fillna(-1)), "level")
        store.merge_settings(res.run_id, {"grading": rule.to_dict(), "pass_rates": [
            {"level": None if r.level == -1 else float(r.level), "n": int(r.n), "graded": int(r.graded),
             "correct": int(r.correct), "pass_rate": None if pd.isna(r.pass_rate) else float(r.pass_rate)}
            for r in table.itertuples()]})
        echo(format_pass_rates(table))
    return 0


def format_pass_rates(table) -> str:
    lines = ["level  traces  graded  correct  pass rate"]
    for r in table.itertuples():
        lv = "-" if r.level == -1 else f"{r.level:g}"
        pr = "n/a" if r.pass_rate != r.pass_rate else f"{100 * r.pass_rate:.0f}%"
        lines.append(f"{lv:>5}  {r.n:>6}  {r.graded:>6}  {r.correct:>7}  {pr:>9}")
    return "\n".join(lines)


def cmd_grade(args) -> int:
    from .grading import GradingRule, regrade_run
    rule = GradingRule(args.rule, args.regex, args.rel_tol, args.abs_tol)
    c = regrade_run(_store(args), args.run_id, rule)
    acc = "n/a" if c["accuracy"] != c["accuracy"] else f"{100 * c['accuracy']:.1f}%"
    echo(f"run {args.run_id} re-graded ({args.rule}): {c['correct']} correct, {c['wrong']} wrong, "
          f"{c['ungraded']} ungraded; accuracy {acc} of graded")
    return 0


def cmd_difficulty(args) -> int:
    from . import difficulty as dif
    store = _store(args)
    stats = store.trace_stats(args.run_ids)
    if stats.empty:
        raise ThinkscopeError(f"no traces in run(s) {', '.join(map(str, args.run_ids))}")
    edges = dif.parse_edges(args.edges, "--edges")
    labels = dif.parse_labels(args.labels)
    if labels is not None and edges is None:
        raise ThinkscopeError("--labels name the bins made by --edges; give --edges too")
    binning = dif.Binning(args.axis, edges, labels, args.min_samples)
    _, s = dif.difficulty_table(stats, args.estimator, args.phase, binning)
    cols = ["run_id", "bin", "count", "mean_entropy", "ci_low", "ci_high", "accuracy", "mean_tokens"]
    echo(f"mean sequence entropy (nats, {args.estimator}, phase {args.phase}) per difficulty bin, 95% t-interval")
    for rid in args.run_ids:
        echo(f"run {rid}: {conditions_text(args.estimator, store.run_settings(rid))}")
    echo(s[cols].round(4).to_string(index=False))
    for rid in args.run_ids:
        names = s.loc[s["run_id"] == rid, "bin"].tolist()
        for flag, b in (("--easy", args.easy), ("--medium", args.medium)):
            if b is not None and b not in names:
                raise ThinkscopeError(f"{flag} {b!r}: run {rid} has no such bin; its bins: {', '.join(map(str, names))}")
        u = dif.u_shape(s, rid, args.easy, args.medium)
        verdict = {True: "U-shape", False: "no U-shape", None: "no verdict"}[u.u_shape]
        change = "n/a" if u.change_pct != u.change_pct else f"{u.change_pct:+.1f}%"
        echo(f"run {rid}: {u.easy} -> {u.medium} entropy change {change} (mean sequence entropy); {verdict}"
             + (f" ({'; '.join(u.notes)})" if u.notes else ""))
    return 0


def cmd_calibrate(args) -> int:
    from . import early_stop as es
    from .runs import run_info
    store = _store(args)
    info = run_info(store, args.run_id)
    rt = es.load_run_tokens(store, args.run_id, args.estimator)
    rule = es.StopRule(args.mode, 0.0, args.k, args.min_tokens, args.budget)
    cal = es.calibrate(rt, rule, args.n_calib, args.seed)
    th = cal.thresholds
    if th is None:
        raise ThinkscopeError(f"run {args.run_id}: {cal.problem}")
    tau = args.tau if args.tau is not None else getattr(th, args.use)
    cue = es.DEFAULT_CUE if args.answer_cue is None else args.answer_cue
    cfg = es.threshold_config(cal, tau, info.model, info.settings, args.run_id, cue, args.answer_tokens)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(cfg.to_json())
    echo(f"signal: {cal.signal_name} ({args.estimator}, nats); {conditions_text(args.estimator, info.settings)}")
    echo(f"tau_mean {th.tau_mean:.4f} nats, tau_info {th.tau_info:.4f} nats (Cohen's d {th.cohens_d:.3f}, "
         f"{th.n_correct} correct / {th.n_incorrect} incorrect calibration traces)")
    note = cal.note()
    if note:
        echo(f"warning: {note}")
    if cal.held.any():
        p = es.StopModel(rt.subset(cal.held), cfg.rule).point(cfg.rule.tau)
        echo(f"held-out at tau {cfg.rule.tau:.4f}: {p['tokens_saved_pct']:.1f}% tokens saved, accuracy "
             f"{100 * p['accuracy']:.1f}% vs {100 * p['baseline_accuracy']:.1f}% without stopping (estimate)")
    echo(f"-> {args.out}")
    return 0


def cmd_early_stop(args) -> int:
    """The Early stopping page's numbers at one threshold: tokens saved and accuracy on the
    calibration and held-out splits, optionally the whole curve, each trace's stop and the
    accuracy measured by replaying the stops with the run's model."""
    import numpy as np
    import pandas as pd

    from . import early_stop as es
    from .cli_runs import write_rows
    from .metrics import estimator_temperature
    from .runs import run_info
    import sys

    def say(*parts) -> None:  # what the numbers are: beside a CSV or JSON Lines table, on stderr
        echo(*parts, file=sys.stderr if args.format != "table" else None)

    store = _store(args)
    info = run_info(store, args.run_id)
    if args.config:
        cfg = es.load_config(args.config)
        estimator, rule = cfg.estimator, cfg.rule
        warning = cfg.check_compatible(info.model or "unknown", estimator,
                                       estimator_temperature(estimator, info.settings))
        if warning:
            say(f"warning: {warning}")
        cue, answer_tokens = cfg.answer_cue, cfg.answer_tokens
    else:
        estimator, cue, answer_tokens = args.estimator, es.DEFAULT_CUE, args.answer_tokens
        rule = es.StopRule(args.mode, 0.0, args.k, args.min_tokens, args.budget)
    rt = es.load_run_tokens(store, args.run_id, estimator)
    cal = es.calibrate(rt, rule, args.n_calib, args.seed)
    th = cal.thresholds
    if args.config:
        tau = rule.tau
    elif args.tau is not None:
        tau = args.tau
    elif th is not None:
        tau = getattr(th, args.use)
    else:
        raise ThinkscopeError(f"run {args.run_id}: {cal.problem}; give --tau")
    rule = es.StopRule(rule.mode, float(tau), rule.k, rule.min_tokens, rule.budget)
    say(f"run {args.run_id}, {rule.mode} rule at tau {tau:.4f} nats ({estimator}); signal: {cal.signal_name}")
    if th is not None:
        say(f"calibration: tau_mean {th.tau_mean:.4f} nats, tau_info {th.tau_info:.4f} nats, Cohen's d "
             f"{th.cohens_d:.3f} ({th.n_correct} correct / {th.n_incorrect} incorrect of {cal.n_calib} traces)")
        if cal.note():
            say(f"warning: {cal.note()}")
    for name, mask in (("calibration", cal.calib), ("held-out", cal.held)):
        if mask.any():
            p = es.StopModel(rt.subset(mask), rule).point(tau)
            say(f"{name}: {p['stopped']} of {p['n']} traces stop early, {p['tokens_saved_pct']:.1f}% tokens saved, "
                 f"accuracy {100 * p['accuracy']:.1f}% vs {100 * p['baseline_accuracy']:.1f}% without stopping "
                 "(estimate: a stopped trace counts as right when it was right and its answer is already written)")
    graded = ~np.isnan(rt.correct)
    model_all = es.StopModel(rt.subset(graded), rule)
    if args.curve:
        say("tokens saved (%) and estimated accuracy per tau (nats), held-out traces" if cal.held.any()
             else "tokens saved (%) and estimated accuracy per tau (nats), all graded traces")
        m = es.StopModel(rt.subset(cal.held), rule) if cal.held.any() else model_all
        c = m.curve(grid=args.curve)
        write_rows(c[["tau", "tokens_saved_pct", "accuracy", "accuracy_kept_pct"]].round(4), args.format)
    stops = model_all.stops(tau)
    if args.stops:
        say("stop = index of the last kept token (-1: no early stop)")
        write_rows(pd.DataFrame({"trace_id": model_all.rt.trace_ids, "correct": model_all.rt.correct > 0.5,
                                 "tokens": model_all.rt.lengths, "stop": stops}), args.format)
    if args.replay:
        from .models import load_model
        from .stopping import replay
        stop_map = {int(t): int(p) for t, p in zip(model_all.rt.trace_ids, stops) if p >= 0}
        if not stop_map:
            say("no trace stops early at this threshold: nothing to replay")
            return 0
        if not info.model:
            raise ThinkscopeError(f"run {args.run_id} does not name a model: it cannot be replayed")
        lm = load_model(info.model)
        from .cli_common import progress_bar
        results = [r for batch in replay(lm, store, args.run_id, stop_map, cue, answer_tokens,
                                         progress=progress_bar("replaying")) for r in batch]
        acc = es.replay_accuracy(model_all, tau, results)
        est = model_all.point(tau)
        pct = lambda v: "n/a (none graded)" if v != v else f"{100 * v:.1f}%"  # noqa: E731
        say(f"replayed {acc['replayed']} of {acc['stopped']} stops: accuracy {pct(acc['accuracy'])} with the "
            f"forced answers (measured, {acc['graded']} graded) vs {pct(est['accuracy'])} estimated, "
            f"{pct(est['baseline_accuracy'])} without stopping; all graded traces")
    return 0


def register(sub) -> None:
    g = sub.add_parser("grade", help="re-grade a stored run with an answer-extraction rule")
    g.add_argument("run_id", type=int)
    g.add_argument("--rule", default="auto", help="auto, boxed, hash, final_answer, answer, the_answer_is, "
                                                  "last_number or regex")
    g.add_argument("--regex", help="with --rule regex: the pattern (group 1, else the whole match)")
    g.add_argument("--rel-tol", type=float, default=1e-6)
    g.add_argument("--abs-tol", type=float, default=1e-9)
    g.set_defaults(func=cmd_grade)

    d = sub.add_parser("difficulty", help="mean sequence entropy per difficulty bin (the U-shape)")
    d.add_argument("run_ids", type=int, nargs="+")
    d.add_argument("--axis", choices=["level", "pass_rate"], default="level")
    d.add_argument("--edges", help="bin edges, commas or semicolons, e.g. '0,0.5,1' (default: each level / "
                                   "ARES buckets)")
    d.add_argument("--labels", help="names of the bins made by --edges, e.g. 'hard,medium,easy'")
    d.add_argument("--min-samples", type=int, default=1,
                   help="pass-rate axis: problems with fewer graded samples get no bin")
    d.add_argument("--easy", metavar="BIN", help="the easy bin of the entropy change (default: 'easy' or the first)")
    d.add_argument("--medium", metavar="BIN", help="the medium bin (default: 'medium' or the middle one)")
    d.add_argument("--estimator", default="full")
    d.add_argument("--phase", choices=["all", "thinking", "answer"], default="all")
    d.set_defaults(func=cmd_difficulty)

    c = sub.add_parser("calibrate", help="calibrate an entropy early-stop threshold on a graded run")
    c.add_argument("run_id", type=int)
    c.add_argument("--out", required=True, help="config JSON for `generate --early-stop`")
    c.add_argument("--mode", choices=["streaming", "gate"], default="streaming")
    c.add_argument("--estimator", default="full")
    c.add_argument("--n-calib", type=int, help="labelled traces used to calibrate (default: a quarter of the "
                                                "graded ones, at least 2; the rest is held out)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--use", choices=["tau_info", "tau_mean"], default="tau_info")
    c.add_argument("--tau", type=float, help="a threshold in nats instead of the calibrated one")
    c.add_argument("--k", type=int, default=16)
    c.add_argument("--min-tokens", type=int, default=32)
    c.add_argument("--budget", type=int, default=64)
    c.add_argument("--answer-cue", help="text appended at a stop to make the model answer (default: a new line "
                                        "and 'Final answer:')")
    c.add_argument("--answer-tokens", type=int, default=12, help="answer tokens decoded after the cue")
    c.set_defaults(func=cmd_calibrate)

    e = sub.add_parser("early-stop", help="tokens saved and accuracy of an early-stop threshold on a graded run "
                                          "(curve, stop positions, replay with the model)")
    e.add_argument("run_id", type=int)
    e.add_argument("--config", metavar="FILE", help="a threshold file (refused when made for another model, "
                                                    "estimator or temperature); else the rule below")
    e.add_argument("--tau", type=float, help="the threshold in nats (default: the calibrated --use)")
    e.add_argument("--use", choices=["tau_mean", "tau_info"], default="tau_mean")
    e.add_argument("--mode", choices=["streaming", "gate"], default="streaming")
    e.add_argument("--estimator", default="full")
    e.add_argument("--k", type=int, default=16)
    e.add_argument("--min-tokens", type=int, default=32)
    e.add_argument("--budget", type=int, default=64)
    e.add_argument("--n-calib", type=int, help="calibration traces (default: a quarter of the graded ones)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--curve", type=int, nargs="?", const=32, metavar="N",
                   help="also print the curve over N thresholds (default 32)")
    e.add_argument("--stops", action="store_true", help="also print each graded trace's stop position")
    e.add_argument("--replay", action="store_true",
                   help="force the answer at each stop with the run's model and grade it (the measured accuracy)")
    e.add_argument("--answer-tokens", type=int, default=12)
    e.add_argument("--format", choices=["table", "csv", "jsonl"], default="table")
    e.set_defaults(func=cmd_early_stop)
