"""Early stopping on entropy: calibrate a threshold, see savings vs accuracy, check by replay."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from analysis import early_stop as es
from analysis import stopping
from analysis import metrics
from analysis.errors import ThinkscopeError
from analysis.store import Store, json_settings
from dashboard import charts_difficulty as charts
from dashboard import state
from dashboard.text import md

MAX_DRAWN = 8  # traces drawn with their stop positions


@st.cache_resource(show_spinner="Reading per-token entropies ...", max_entries=8)
def load_tokens(path: str, version: int, run_id: int, estimator: str) -> es.RunTokens:
    return es.load_run_tokens(Store(path), run_id, estimator)


@st.cache_resource(show_spinner=False, max_entries=16)
def build_models(path: str, version: int, run_id: int, estimator: str, mode: str, k: int, min_tokens: int,
                 budget: int, n_calib: int, seed: int) -> dict:
    """The calibration (es.calibrate, as `thinkscope calibrate`) and StopModels for the
    calibration split, the held-out split and all graded traces."""
    rt = load_tokens(path, version, run_id, estimator)
    rule = es.StopRule(mode, 0.0, k, min_tokens, budget)
    cal = es.calibrate(rt, rule, n_calib, seed)
    out = {"all": es.StopModel(rt.subset(~np.isnan(rt.correct)), rule), "calibrated": cal}
    if cal.calib.any():
        out["calibration"] = es.StopModel(rt.subset(cal.calib), rule)
    if cal.held.any():
        out["held-out"] = es.StopModel(rt.subset(cal.held), rule)
    return out


@st.cache_resource(show_spinner="Loading the run's model for replay ...", max_entries=1)
def replay_model(name: str):
    from analysis.models import load_model
    return load_model(name)


def run_model_name(runs: pd.DataFrame, run_id: int) -> str | None:
    m = runs.loc[runs.run_id == run_id, "model"]
    return None if m.empty or pd.isna(m.iloc[0]) else str(m.iloc[0])


def model_available(name: str | None) -> str | None:
    """None when the model can be loaded here, else the reason why not."""
    if not name:
        return "the run does not name a model"
    try:
        from analysis.models import resolve
        resolve(name)
        return None
    except Exception as e:  # noqa: BLE001 - any failure means: no replay, say why
        return str(e)


st.title("Early stopping on entropy")
st.caption("Think Just Enough (arXiv 2510.08146): stop reasoning when the model is confident, i.e. when "
           "entropy falls to a threshold τ. It reports 25-50% fewer tokens at unchanged accuracy for "
           "post-trained reasoning models, and no such signal in a plain instruction-tuned model: check "
           "which case your model is.")

runs = state.cached(state.runs)
# opens on the run with the most graded traces, unless the user has chosen one
run_id = state.select_run("early_stop.run", runs, default=state.most_graded_run(runs))
if run_id is None:
    st.stop()
s = state.store()
traces = state.cached(state.traces, int(run_id))
full = bool(traces["estimator"].eq("full").any())  # a run with all logits has both full estimators
estimators = metrics.available_estimators(full, full or bool(traces["estimator"].eq("full_t1").any()),
                                          int(traces["k"].gt(0).any()))
if traces.empty or not estimators:
    st.info("This run has no traces with entropy values.")
    st.stop()
n_graded = int(traces["correct"].notna().sum())
if n_graded < 2:
    st.warning(f"This run has {n_graded} graded trace(s): early stopping needs traces graded correct/incorrect. "
               "Generate with `thinkscope generate --problems SET`, or re-grade with `thinkscope grade RUN`.")
    st.stop()

unit = state.unit()
scale = metrics.unit_scale(unit)
c1, c2, c3, c4 = st.columns([1.2, 1.4, 1, 1])
# keys scoped by what their options and values depend on: a switch starts from this run's defaults
estimator = c1.selectbox("Estimator", estimators, key=f"early_stop.estimator.{run_id}",
                         help="\n".join(f"- **{e}**: {metrics.ESTIMATORS[e]}" for e in estimators))
mode = c2.radio("Rule", list(es.MODES), horizontal=True, key="early_stop.mode",
                format_func={"gate": "confidence gate", "streaming": "streaming stop"}.get,
                help="Gate: after a budget of b tokens, stop if the prefix's mean entropy ≤ τ, else reason in "
                     "full. Streaming: stop at the first position (≥ min tokens) where the mean entropy of "
                     "the last k tokens ≤ τ.")
if mode == "gate":
    budget = int(c3.number_input("Budget b (tokens)", 1, 100_000, 64, key="early_stop.budget"))
    k, min_tokens = 16, 32
else:
    budget = 64
    k = int(c3.number_input("Window k (tokens)", 1, 4096, 16, key="early_stop.k"))
    min_tokens = int(c4.number_input("Min tokens", 0, 100_000, 32, key="early_stop.min_tokens"))

c5, c6 = st.columns([2, 1])
n_calib = int(c5.slider("Labelled traces for calibration (the rest is held out)", 1, n_graded,
                        es.default_n_calib(n_graded), key="early_stop.n_calib"))
seed = int(c6.number_input("Split seed", 0, 10_000, 0, key="early_stop.seed"))

try:
    models = state.cached(build_models, int(run_id), estimator, mode, k, min_tokens, budget, n_calib, seed)
except ThinkscopeError as e:
    st.error(md(e))
    st.stop()

n_ungraded = len(traces) - n_graded
if n_ungraded:
    st.caption(f"{n_ungraded} ungraded trace(s) (no gold answer, or no extractable answer) are left out of "
               "calibration and curves.")

# ---------------------------------------------------------------- calibration
cal = models["calibrated"]
rt_all, calib_mask, signal_all, signal_name = cal.rt, cal.calib, cal.signal, cal.signal_name
th = cal.thresholds
if th is None:
    st.warning(md(cal.problem))

marks = {} if th is None else {"τ_mean": th.tau_mean, "τ_info": th.tau_info}
m1, m2, m3, m4 = st.columns(4)
fmt = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{v * scale:.3f} {unit}"  # noqa: E731
m1.metric("τ_mean", fmt(th.tau_mean if th else None), help="Mean signal of the correct calibration traces.")
m2.metric("τ_info", fmt(th.tau_info if th else None),
          help="μ_c + σ_c · ln(1 + |d|), d = Cohen's d between correct and incorrect (arXiv 2510.08146).")
m3.metric("Cohen's d", "n/a" if th is None or math.isnan(th.cohens_d) else f"{th.cohens_d:.2f}",
          help="(mean incorrect − mean correct) / pooled SD. Near 0: entropy does not separate right from "
               "wrong on this model, and no threshold will save tokens for free.")
m4.metric("calibration: correct / incorrect", "n/a" if th is None else f"{th.n_correct} / {th.n_incorrect}")
st.caption(f"τ_mean and τ_info are computed on the {signal_name} of the labelled calibration traces, "
           "labelled by whether the full trace was graded correct: the value the rule compares with τ.")
if cal.note():
    st.warning(md(cal.note()))

# ---------------------------------------------------------------- threshold slider
lo, hi = es.tau_range(models["all"])
lo_d, hi_d = float(np.floor(lo * scale * 1000) / 1000), float(np.ceil(hi * scale * 1000) / 1000)
if hi_d <= lo_d:
    hi_d = lo_d + 0.001
# τ belongs to a run, estimator and rule; it is kept in nats so that a unit switch keeps it
tau_scope = f"{run_id}.{estimator}.{mode}"
tau_key, tau_nats_key = f"early_stop.tau.{tau_scope}.{unit}", f"early_stop.tau_nats.{tau_scope}"
if tau_nats_key in st.session_state:
    start = st.session_state[tau_nats_key] * scale
elif th is not None and math.isfinite(th.tau_mean):
    start = th.tau_mean * scale
else:
    start = (lo_d + hi_d) / 2
state.seed(tau_key, float(np.clip(st.session_state.get(tau_key, start), lo_d, hi_d)))


def _set_tau(v: float) -> None:
    st.session_state[tau_key] = float(np.clip(v * scale, lo_d, hi_d))


b1, b2, b3 = st.columns([4, 1, 1])
tau_disp = b1.slider(f"Threshold τ ({unit}, {estimator})", lo_d, hi_d, step=max((hi_d - lo_d) / 500, 0.001),
                     key=tau_key, format="%.3f")
if th is not None:
    b2.button("τ = τ_mean", on_click=_set_tau, args=(th.tau_mean,), key="early_stop.use_mean")
    b3.button("τ = τ_info", on_click=_set_tau, args=(th.tau_info,), key="early_stop.use_info")
tau = tau_disp / scale
st.session_state[tau_nats_key] = tau

curves = {name: models[name].curve() for name in ("calibration", "held-out") if name in models}
points = {name: {**models[name].point(tau), "tau": tau} for name in curves}
cols = st.columns(max(1, len(points)))
for col, (name, p) in zip(cols, points.items()):
    col.metric(f"{name}: tokens saved", f"{p['tokens_saved_pct']:.1f}%",
               help=f"{p['stopped']} of {p['n']} traces stop early.")
    col.metric(f"{name}: accuracy (estimate)", f"{p['accuracy'] * 100:.1f}%",
               delta=f"{(p['accuracy'] - p['baseline_accuracy']) * 100:+.1f} pts vs no stop")
f1, f2 = st.columns(2)
f1.plotly_chart(charts.tradeoff_figure(curves, points, unit, estimator), width="stretch", key="early_stop.tradeoff")
f2.plotly_chart(charts.threshold_figure(curves, tau, marks, unit, estimator), width="stretch",
                key="early_stop.threshold")
st.caption("**How accuracy is estimated here:** a trace that does not stop keeps its own grade; a trace that "
           "stops counts as correct only if it was correct in full *and* its graded final answer already "
           "appears in the text before the stop. This is an estimate, not a measurement: the model might "
           "answer differently when forced. Replay (below) measures it.")
with st.expander("Calibration traces: signal by correctness"):
    shown = calib_mask & ~np.isnan(signal_all)  # a trace too short for the rule has no signal
    st.plotly_chart(charts.calibration_figure(signal_all[shown], rt_all.correct[shown] > 0.5, marks,
                                              unit, estimator, signal_name), width="stretch",
                    key="early_stop.calibration")

# ---------------------------------------------------------------- stop positions
st.subheader("Stop positions")
m_all = models["all"]
stops_all = m_all.stops(tau)
# options are this run's trace ids, under a key of this run: no other run's pick can show up here
row_of = {int(t): i for i, t in enumerate(m_all.rt.trace_ids[:200])}
label_of = {t: f"trace {t} ({'✓' if m_all.rt.correct[i] > 0.5 else '✗'}, {int(m_all.rt.lengths[i])} tokens)"
            for t, i in row_of.items()}
drawn_key = f"early_stop.drawn.{run_id}"
remembered = state.valid_selection(drawn_key, label_of)
picked = st.multiselect("Traces to draw", list(label_of), default=None if remembered else list(label_of)[:4],
                        format_func=lambda t: label_of.get(t, f"trace {t}"),
                        key=drawn_key, max_selections=MAX_DRAWN)
running = es.running_mean(m_all.rt, k if mode == "streaming" else budget)
drawn = []
for t in picked:
    i = row_of[t]
    o, n = m_all.rt.offsets[i], m_all.rt.lengths[i]
    drawn.append({"label": label_of[t], "h": m_all.rt.h[o: o + n], "running": running[o: o + n],
                  "stop": int(stops_all[i])})
st.plotly_chart(charts.stop_positions_figure(drawn, tau, unit, estimator, k if mode == "streaming" else budget,
                                             min_tokens if mode == "streaming" else budget),
                width="stretch", key="early_stop.stops")

# ---------------------------------------------------------------- replay
st.subheader("Replay: the real accuracy at these stops")
model_name = run_model_name(runs, int(run_id))
has_ids = bool(state.cached(state.tokens, int(traces["trace_id"].iloc[0]))["token_id"].ge(0).all())
why_not = None if has_ids else "the run has no token ids (an uploaded text run)"
why_not = why_not or model_available(model_name)
stop_map = {int(t): int(p) for t, p in zip(m_all.rt.trace_ids, stops_all) if p >= 0}
settings = json_settings(runs.loc[runs.run_id == run_id, "settings"].iloc[0])
st.caption(f"This run's entropies: {metrics.conditions_text(estimator, settings)}; a threshold file applies "
           "only at the temperature it was calibrated at.")
cue = st.text_input("Answer cue appended at the stop", es.DEFAULT_CUE.strip(), key="early_stop.cue")
answer_tokens = int(st.number_input("Answer tokens to decode", 1, 64, 12, key="early_stop.answer_tokens"))
replay_key = ("early_stop.replay", int(run_id), estimator, mode, k, min_tokens, budget, round(tau, 9), cue,
              answer_tokens)
done: list = st.session_state.setdefault(str(replay_key), [])
if why_not:
    st.info(f"Replay is not available for this run ({md(why_not)}). The accuracy above is the "
            "estimate described under the curves.")
elif not stop_map:
    st.info("No trace stops early at this threshold: nothing to replay.")
else:
    todo = {t: p for t, p in stop_map.items() if t not in {r.trace_id for r in done}}
    r1, r2 = st.columns([1, 3])
    start = r1.button(f"Replay {len(todo)} stop(s)" if done else f"Replay at τ ({len(todo)} stops)",
                      key="early_stop.replay_go", disabled=not todo)
    r2.caption("Forces the answer with the model at each stop (cue + greedy decoding) and grades it. "
               "Cancel keeps the finished batches; the rest can be resumed.")
    if start and todo:
        # any click (this one included) reruns the page and so interrupts the loop below;
        # each finished batch is already in session state, so nothing finished is lost
        st.button("Cancel replay", key="early_stop.replay_cancel")
        lm = replay_model(model_name)
        bar = st.progress(0.0, text="replaying ...")
        for batch in stopping.replay(lm, s, int(run_id), todo, "\n" + cue.strip() if cue.strip() else "", answer_tokens,
                               progress=lambda d, n: bar.progress(d / max(n, 1), text=f"replayed {d} of {n}")):
            done.extend(batch)  # kept in session state as each batch finishes
    if done:
        acc = es.replay_accuracy(m_all, tau, done)
        p_all = m_all.point(tau)
        q1, q2, q3 = st.columns(3)
        q1.metric("accuracy with replayed answers", f"{acc['accuracy'] * 100:.1f}%",
                  help="Stopped traces graded on the forced answer; the others on their own answer.")
        q2.metric("estimate at the same τ", f"{p_all['accuracy'] * 100:.1f}%")
        q3.metric("replayed", f"{acc['replayed']} of {acc['stopped']} stops")
        st.dataframe(pd.DataFrame([{"trace": r.trace_id, "stop after token": r.stop, "forced answer": r.answer,
                                    "extracted": r.pred, "correct": r.correct} for r in done]),
                     hide_index=True, width="stretch")

# ---------------------------------------------------------------- export / import
st.subheader("Export or load a threshold")
cfg = es.threshold_config(cal, tau, model_name, settings, int(run_id), "\n" + cue.strip() if cue.strip() else "",
                          answer_tokens)
x1, x2 = st.columns(2)
x1.download_button("Download settings (JSON)", cfg.to_json(), file_name=f"early_stop_run{run_id}.json",
                   mime="application/json", key="early_stop.download",
                   help="Use with `thinkscope generate --early-stop FILE`.")
up = x2.file_uploader("Load a threshold file", type=["json"], key="early_stop.upload")
if up is not None:
    try:
        loaded = es.EarlyStopConfig.from_json(up.getvalue().decode("utf-8", "replace"), up.name)
        warning = loaded.check_compatible(model_name or "unknown", estimator,
                                          metrics.estimator_temperature(estimator, settings))
    except ThinkscopeError as e:
        st.error(md(e))
    else:
        if warning:
            st.warning(md(warning))
        st.success(f"{md(up.name)}: τ = {loaded.rule.tau * scale:.3f} {unit} ({loaded.rule.mode}).")
        st.button("Apply its τ", on_click=_set_tau, args=(loaded.rule.tau,), key="early_stop.apply")
