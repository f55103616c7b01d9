"""Signals: which entropy or sample signal tells a wrong answer from a right one on this run."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis import metrics
from analysis import run_signals as rsm
from analysis import signals as sig
from analysis.errors import ThinkscopeError
from analysis.store import Store
from dashboard import charts_signals as charts
from dashboard import state
from dashboard.text import md


@st.cache_data(show_spinner=False, max_entries=8)
def load_signals(path: str, version: int, run_id: int) -> rsm.RunSignals:
    return rsm.run_signals(Store(path), run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def evaluate(path: str, version: int, run_id: int, resamples: int, seed: int) -> sig.Evaluation:
    return rsm.evaluate_run(load_signals(path, version, run_id), resamples, seed)


def ranked_table(t: pd.DataFrame) -> pd.DataFrame:
    def ci(lo, hi):
        return "—" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]"

    return pd.DataFrame({
        "rank": range(1, len(t) + 1),
        "signal": t["label"],
        "unit": t["unit"],
        "expected": t["direction"],
        "AUROC (wrong)": t["auroc"].round(3),
        "AUROC 95% CI": [ci(a, b) for a, b in zip(t["auroc_low"], t["auroc_high"])],
        "AUPRC (wrong)": t["auprc"].round(3),
        "AUPRC 95% CI": [ci(a, b) for a, b in zip(t["auprc_low"], t["auprc_high"])],
        "AUPRC by chance": t["auprc_chance"].round(3),
        "traces": t["n"],
        "verdict": t["verdict"],
    })


st.title("Signals: which one predicts a wrong answer?")
st.caption("Each signal is judged by how well it separates wrong answers from right ones on a graded run "
           "(semantic entropy, Farquhar et al. 2024; EPR, arXiv 2509.04492; Think Just Enough, arXiv 2510.08146): "
           "AUROC and AUPRC for “wrong” with 95 % bootstrap percentile intervals (whole problems resampled when "
           "there are several samples per problem), ROC curves, and a logistic calibration judged on held-out "
           "problems. AUROC does not depend on the display unit.")

runs = state.cached(state.runs)
run_id = state.select_run("signals.run", runs, default=state.most_graded_run(runs))
if run_id is None:
    st.stop()
c1, c2 = st.columns(2)
resamples = int(c1.number_input("Bootstrap resamples", 100, 5000, 1000, step=100, key="signals.resamples"))
seed = int(c2.number_input("Seed", 0, 10_000, 0, key="signals.seed"))

try:
    rs = state.cached(load_signals, int(run_id))
    ev = state.cached(evaluate, int(run_id), resamples, seed)
except ThinkscopeError as e:
    st.info(md(e))
    st.stop()

for note in ev.notes:
    (st.info if "unavailable" in note else st.caption)(md(note))
what = f"{ev.n_groups} problems" if ev.by_problem else f"{ev.n} traces"
st.markdown(f"**{ev.n} graded traces, {ev.n_wrong} wrong** ({100 * ev.n_wrong / ev.n:.0f} %); intervals from "
            f"{ev.resamples} resamples of the {what}. Token-level signals use the run's estimator "
            f"**{md(rs.estimator)}**; ungraded traces are left out.")

unit = state.unit()  # AUROC and AUPRC do not depend on it; labels, units and slopes do
t = ev.table.assign(label=ev.table["label"].map(lambda x: rsm.in_unit(x, unit)),
                    unit=ev.table["unit"].replace({"nats": unit}))
beat = t.loc[t["verdict"] == "better than chance", "label"].tolist()
reversed_ = t.loc[t["verdict"] == "reversed (below chance)", "label"].tolist()
none = t.loc[t["verdict"].isin(["not distinguishable from chance", "no interval"]), "label"].tolist()
few = t.loc[t["verdict"].str.startswith("too few"), "label"].tolist()
if beat:
    st.success("Better than chance on this run (AUROC interval above 0.5): " + md("; ".join(beat)) + ".")
else:
    st.warning("No signal beats chance on this run: every AUROC interval reaches down to 0.5 or below.")
if reversed_:
    st.warning("Reversed on this run (interval below 0.5, the opposite of the expected direction): "
               + md("; ".join(reversed_)) + ".")
if none:
    st.caption("Not distinguishable from chance (interval holds 0.5): " + md("; ".join(none)) + ".")
if few:
    st.caption(f"No verdict, fewer than {sig.MIN_CLASS} right or wrong traces have a value: " + md("; ".join(few))
               + ".")
st.dataframe(ranked_table(t), hide_index=True, width="stretch", key="signals.table")
if (t["n"] < ev.n).any():
    st.caption("A trace where a signal is undefined (no answer part, no logprobs, a problem with one sample) is "
               "left out of that signal only: compare the traces column before comparing intervals.")
st.download_button("Download the table (CSV)", ranked_table(t).to_csv(index=False).encode("utf-8"),
                   file_name=f"signals_run{run_id}.csv", mime="text/csv", key="signals.download")

ranked = t.dropna(subset=["auroc"])["signal"].tolist()
labels = dict(zip(t["signal"], t["label"]))
state.valid_selection("signals.roc", ranked)
default = ranked[:4] + [s for s in ("semantic_entropy",) if s in ranked and s not in ranked[:4]]
chosen = st.multiselect("Signals on the ROC plot", ranked, default=default, format_func=labels.get,
                        key="signals.roc")
curves = {labels[k]: v for k, v in rsm.roc_curves(rs, chosen).items()}
auc = dict(zip(t["label"], t["auroc"]))
st.plotly_chart(charts.roc_figure(curves, auc), width="stretch", key="signals.roc_figure")

st.subheader("Calibration")
st.caption("P(correct) = sigmoid(a + b · signal), fitted by maximum likelihood on the calibration split of the "
           "problems (EPR, arXiv 2509.04492); the reliability diagram and the expected calibration error (ECE, "
           "10 equal-width bins: Σ n_b/N · |observed − predicted|) are on the held-out problems.")
k1, k2 = st.columns(2)
state.valid_choice("signals.calib_signal", ranked)
target = k1.selectbox("Signal", ranked, format_func=labels.get, key="signals.calib_signal")
fraction = k2.slider("Share of problems in the calibration split", 0.2, 0.8, 0.5, 0.05, key="signals.calib_fraction")
if target is not None:
    try:
        cal = rsm.calibrate_signal(rs, target, fraction, seed)
    except ThinkscopeError as e:
        st.info(md(e))
    else:
        m1, m2, m3 = st.columns(3)
        m1.metric(f"ECE (held-out, {cal.n_held} traces)", f"{cal.ece:.3f}")
        m2.metric("a (intercept)", f"{cal.a:.3f}")
        per = rs.specs[target].unit or "unit"
        b = cal.b / metrics.unit_scale(unit) if per == "nats" else cal.b  # per nat -> per bit: × ln 2
        m3.metric(f"b (per {unit if per == 'nats' else per})", f"{b:.3f}")
        st.plotly_chart(charts.reliability_figure(cal.bins, labels[target], cal.ece), width="stretch",
                        key="signals.reliability")
