"""Difficulty and the U-shape: mean sequence entropy per difficulty bin, one curve per run."""

from __future__ import annotations


import pandas as pd
import streamlit as st

from analysis import difficulty as dif
from analysis import grading
from analysis import metrics
from analysis.errors import ThinkscopeError
from analysis.store import Store
from dashboard import charts_difficulty as charts
from dashboard import state
from dashboard.text import md

MIN_BIN = 5  # traces a bin needs before its mean is compared with another bin's


@st.cache_data(show_spinner=False, max_entries=16)
def load_stats(path: str, version: int, run_ids: tuple[int, ...]) -> pd.DataFrame:
    return Store(path).trace_stats(list(run_ids))


def bin_table(s: pd.DataFrame, unit: str, scale: float, estimator: str, phase: str) -> pd.DataFrame:
    """The per-bin table as shown: named quantities, accuracy in %, a missing interval as '—' with why."""
    def ci(v, n):
        return f"{v * scale:.3f}" if pd.notna(v) else ("— (one trace)" if n < 2 else "—")

    def acc(v, graded):
        return f"{100 * v:.1f}" if pd.notna(v) else ("— (none graded)" if graded == 0 else "—")

    return pd.DataFrame({
        "bin": s["bin"].astype(str),
        "traces": s["count"].astype(int),
        f"mean H ({unit}, {estimator}, {phase} tokens)": (s["mean_entropy"] * scale).round(3),
        "95% CI low": [ci(v, n) for v, n in zip(s["ci_low"], s["count"])],
        "95% CI high": [ci(v, n) for v, n in zip(s["ci_high"], s["count"])],
        "accuracy (% of graded)": [acc(v, g) for v, g in zip(s["accuracy"], s["graded"])],
        "graded": s["graded"].astype(int),
        "mean length (tokens)": s["mean_tokens"].round(1),
    })


st.title("Difficulty and the U-shape")
st.caption("DiffAdapt (arXiv 2510.19669) reports mean trace entropy that is high on easy problems, lower on "
           "medium ones and high again on hard ones (a 22-25% drop from easy to medium). Test it on your runs: "
           "difficulty from the problem set's level or from the pass rate over the samples of each problem "
           "(ARES buckets, arXiv 2510.08457: ≥ 2/3 easy, ≥ 1/3 medium, else hard).")

runs = state.cached(state.runs)
# opens on the run with the most graded traces, unless the user has chosen one
run_a = state.select_run("difficulty.run_a", runs, default=state.most_graded_run(runs))
if run_a is None:
    st.stop()
labels = {r.run_id: state.run_label(r) for r in runs.itertuples()}
others = [r for r in runs["run_id"].tolist() if r != run_a]
compare = st.checkbox("Compare with a second run (another model or temperature)", key="difficulty.compare",
                      disabled=not others)
run_ids = [int(run_a)]
if compare and others:
    run_b = st.selectbox("Second run", others, format_func=labels.get, key=f"difficulty.run_b.{run_a}")
    run_ids.append(int(run_b))

with st.expander("Re-grade the first run (when the answer-extraction rule changes)"):
    g1, g2, g3, g4 = st.columns([1.3, 1.6, 0.8, 0.8])
    rule_name = g1.selectbox("Rule", list(grading.RULE_NAMES), key="difficulty.grade_rule",
                             format_func=lambda r: f"{r}: {grading.RULE_NAMES[r]}")
    regex = g2.text_input("Regular expression (rule 'regex')", "", key="difficulty.grade_regex",
                          disabled=rule_name != "regex")
    rel_tol = g3.number_input("Relative tolerance", 0.0, 1.0, 1e-6, format="%g", key="difficulty.rel_tol")
    abs_tol = g4.number_input("Absolute tolerance", 0.0, 1e6, 1e-9, format="%g", key="difficulty.abs_tol")
    if st.button("Re-grade", key="difficulty.regrade"):
        try:
            counts = grading.regrade_run(state.store(), int(run_a),
                                         grading.GradingRule(rule_name, regex or None, rel_tol, abs_tol))
        except ThinkscopeError as e:  # a bad rule or regular expression
            st.error(md(e))
        else:
            st.success(f"{counts['correct']} correct, {counts['wrong']} wrong, {counts['ungraded']} ungraded "
                       "(an answer that cannot be extracted is ungraded, never wrong).")

stats = state.cached(load_stats, tuple(run_ids))
estimators = dif.available_estimators(stats)
if not estimators:
    st.warning("These runs have no entropy values (their source gave neither logits nor top-k logprobs).")
    st.stop()

c1, c2, c3 = st.columns([1.2, 1.2, 1.6])
estimator = c1.selectbox("Estimator", estimators, key="difficulty.estimator",
                         help="\n".join(f"- **{e}**: {metrics.ESTIMATORS[e]}" for e in estimators))
phase = c2.radio("Phase", list(metrics.PHASES), horizontal=True, key="difficulty.phase",
                 help="Sequence entropy over the whole completion, the thinking part or the answer part "
                      "(split at the run's end-of-thinking marker).")
axis = c3.radio("Difficulty from", ["level", "pass_rate"], horizontal=True, key="difficulty.axis",
                format_func={"level": "problem level", "pass_rate": "pass rate over samples"}.get)

c4, c5, c6 = st.columns([1.6, 1.6, 1])
if axis == "level":
    edges_text = c4.text_input("Level bin edges (empty: one bin per level)", "", key="difficulty.level_edges",
                               placeholder="e.g. 1, 3, 5, 7")
else:
    edges_text = c4.text_input("Pass-rate bin edges (empty: ARES buckets)", "", key="difficulty.pr_edges",
                               placeholder="e.g. 0, 0.25, 0.75, 1")
labels_text = c5.text_input("Bin labels (optional, comma-separated)", "", key="difficulty.labels")
min_samples = c6.number_input("Min graded samples", 1, 64, 1, key="difficulty.min_samples",
                              disabled=axis != "pass_rate",
                              help="Problems with fewer graded samples get no pass-rate bin.")
try:
    edges = dif.parse_edges(edges_text)
    bin_labels = dif.parse_labels(labels_text)
    binning = dif.Binning(axis, edges, bin_labels if edges else None, int(min_samples))
    binned, summary = dif.difficulty_table(stats, estimator, phase, binning)
except ThinkscopeError as e:  # bad bins or edges, an axis the runs cannot give
    st.error(md(e))
    st.stop()

if summary.empty:
    st.info("No trace falls into a difficulty bin (no levels, or no graded samples).")
    st.stop()

unit = state.unit()
scale = metrics.unit_scale(unit)
axis_title = "problem level" if axis == "level" else "pass-rate bucket (easy → hard)"
fig = charts.u_shape_figure(summary, {r: labels.get(r, f"run {r}") for r in run_ids}, unit, estimator, phase,
                            axis_title)
st.plotly_chart(fig, width="stretch", key="difficulty.figure")
st.caption(md("Entropies taken at: " + "; ".join(
    f"{labels.get(r, f'run {r}')}: {metrics.conditions_text(estimator, state.cached(state.run_settings, int(r)))}"
    for r in run_ids) + ". Runs at different temperatures are not on one entropy scale."))

bins_all = summary.sort_values("bin_order")["bin"].drop_duplicates().tolist()
cols = st.columns(len(run_ids))
for col, rid in zip(cols, run_ids):
    s = summary[summary.run_id == rid]
    with col:
        st.markdown(f"**{md(labels.get(rid, f'run {rid}'))}**")
        if s.empty:
            st.info("No binned traces in this run.")
            continue
        names = s.sort_values("bin_order")["bin"].tolist()
        u0 = dif.u_shape(summary, rid)
        e1, e2 = st.columns(2)
        # the bins depend on the binning: a remembered bin that no longer exists is forgotten
        for which in ("easy", "medium"):
            state.valid_choice(f"difficulty.{which}.{rid}", names)
        easy = e1.selectbox("easy bin", names, index=names.index(u0.easy), key=f"difficulty.easy.{rid}")
        medium = e2.selectbox("medium bin", names, index=names.index(u0.medium), key=f"difficulty.medium.{rid}")
        u = dif.u_shape(summary, rid, easy, medium)
        counts = dict(zip(s["bin"], s["count"].astype(int)))
        small = [b for b in names if counts[b] < MIN_BIN]
        pair_small = [b for b in (easy, medium) if counts[b] < MIN_BIN]
        change_label = f"entropy change {md(easy)} → {md(medium)} (mean H, {estimator})"
        if pair_small:
            st.metric(change_label, "—", help=f"Not computed: {md(', '.join(pair_small))} has fewer than {MIN_BIN} "
                                              "traces, too few for a mean to compare.")
        else:
            st.metric(change_label, "n/a" if pd.isna(u.change_pct) else f"{u.change_pct:+.1f}%",
                      help="100 × (H_medium − H_easy) / H_easy, mean sequence entropy; DiffAdapt reports "
                           "−22..−25%.")
        if small:
            st.warning(f"No verdict: {len(small)} bin(s) hold fewer than {MIN_BIN} traces ("
                       + ", ".join(f"{md(b)}: {counts[b]}" for b in small)
                       + "). Sample more traces per problem, or merge bins with the bin edges above.")
        elif u.u_shape is True:
            st.success(f"U-shape: the lowest entropy is in {md(u.lowest)}, and both end bins lie above it "
                       "(95% intervals apart).")
        elif u.u_shape is False:
            st.warning("No U-shape on this run: " + md("; ".join(u.notes)))
        else:
            st.info(md("; ".join(u.notes)))
        st.dataframe(bin_table(s, unit, scale, estimator, phase), hide_index=True, width="stretch")

excluded = int(binned["bin"].isna().sum())
if excluded:
    st.caption(f"{excluded} trace(s) fall in no bin (no level, or their problem has no graded sample) and are "
               "left out. Ungraded traces count in the entropy but not in the accuracy.")
