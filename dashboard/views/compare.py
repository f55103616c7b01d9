"""Compare: token entropy of runs (Beyond 80/20), of two models on the same tokens, and over checkpoints."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis import compare as cmp
from analysis import metrics
from analysis.errors import ThinkscopeError
from analysis.store import Store, json_settings
from dashboard import charts_signals as charts
from dashboard import state
from dashboard.text import md


@st.cache_data(show_spinner=False, max_entries=16)
def load_profile(path: str, version: int, run_id: int) -> cmp.TokenEntropyProfile:
    return cmp.run_token_entropy_profile(Store(path), run_id)


@st.cache_data(show_spinner=False, max_entries=8)
def load_positions(path: str, version: int, run_a: int, run_b: int) -> cmp.PositionComparison:
    return cmp.compare_positions(Store(path), run_a, run_b)


@st.cache_data(show_spinner=False, max_entries=8)
def load_series(path: str, version: int) -> cmp.CheckpointSeries:
    return cmp.checkpoint_series(Store(path))


st.title("Compare runs, models and checkpoints")
runs = state.cached(state.runs)
if runs.empty:
    state.select_run("compare.run", runs)
    st.stop()
unit = state.unit()
scale = metrics.unit_scale(unit)
labels = {int(r.run_id): state.run_label(r) for r in runs.itertuples()}
ids = list(labels)
tab_tokens, tab_models, tab_steps = st.tabs(["Token entropy (Beyond 80/20)", "Models on the same tokens",
                                             "Checkpoints"])

# ---------------------------------------------------------------- Beyond 80/20
with tab_tokens:
    st.caption("Beyond the 80/20 rule (arXiv 2506.01939) finds more than half of the tokens below 0.01 nats, "
               "the 80th percentile at 0.672 nats for Qwen3-8B, and discourse tokens (“wait”, “however”, "
               "“suppose”) most often among the high-entropy 20 %.")
    run_a = state.select_run("compare.run", runs)
    others = [r for r in ids if r != run_a]
    two = st.checkbox("Side by side with a second run", key="compare.tokens_two", disabled=not others)
    shown = [int(run_a)]
    if two and others:
        shown.append(int(st.selectbox("Second run", others, format_func=labels.get, key=f"compare.tokens_b.{run_a}")))
    profiles = {}
    for rid in shown:
        try:
            profiles[rid] = state.cached(load_profile, rid)
        except ThinkscopeError as e:
            st.info(md(e))
    if profiles:
        est = next(iter(profiles.values())).estimator
        st.plotly_chart(charts.entropy_histogram_figure({labels[r]: p.hist for r, p in profiles.items()}, unit, est,
                                                        scale, cmp.LOW_ENTROPY),
                        width="stretch", key="compare.hist")
        cols = st.columns(len(profiles))
        for col, (rid, p) in zip(cols, profiles.items()):
            with col:
                st.markdown(f"**{md(labels[rid])}**")
                m1, m2, m3 = st.columns(3)
                m1.metric(f"tokens with H < {0.01 * scale:.4g} {unit} ({p.estimator})", f"{100 * p.share_below:.1f}%")
                m2.metric(f"80th percentile of H ({unit}, {p.estimator})", f"{p.p80 * scale:.3f}")
                m3.metric(f"median H ({unit}, {p.estimator})", f"{p.median * scale:.3f}")
                st.plotly_chart(charts.top_tokens_figure(p.top_tokens, f"Most often in the top 20 %: {labels[rid]}"),
                                width="stretch", key=f"compare.top.{rid}")
                st.dataframe(p.top_tokens.rename(columns={
                    "count_top": "count in the top 20 %", "count_all": "count in the run",
                    "share_of_top": "share of the top 20 %", "share_high": "share of its uses in the top 20 %"}),
                    hide_index=True, width="stretch", key=f"compare.top_table.{rid}")

# ---------------------------------------------------------------- same tokens
with tab_models:
    st.caption("Re-score a run's tokens with another model (teacher forcing: `thinkscope rescore RUN --model M`, "
               "or below), then compare position by position: the overlap of the two models' top-20 % positions "
               "and the entropy change binned by model A's entropy percentile (Beyond the 80/20 rule compares base "
               "and RL checkpoints this way and finds over 86 % overlap).")
    rescored = {int(r.run_id): json_settings(r.settings).get("rescored_from") for r in runs.itertuples()}
    pairs = [(src, rid) for rid, src in rescored.items() if src in labels]
    m1, m2 = st.columns(2)
    state.valid_choice("compare.model_a", ids)
    if "compare.model_a" not in st.session_state:  # a re-scored pair if there is one
        state.seed("compare.model_a", pairs[-1][0] if pairs else ids[0])
    a = int(m1.selectbox("Model A: the run", ids, format_func=labels.get, key="compare.model_a"))
    b_options = [r for r in ids if r != a]
    b_default = [rid for src, rid in pairs if src == a]
    b = None
    if b_options:
        key_b = f"compare.model_b.{a}"
        state.valid_choice(key_b, b_options)
        b = int(m2.selectbox("Model B: the same tokens re-scored", b_options, format_func=labels.get, key=key_b,
                             index=b_options.index(b_default[-1]) if b_default else 0))
    with st.expander("Re-score run A with another model"):
        spec = st.text_input("Model (folder, .gguf file or cached hub id; empty: the embedded model)", "",
                             key="compare.rescore_model")
        step = st.text_input("Checkpoint step of that model (optional)", "", key="compare.rescore_step")
        if st.button("Re-score", key="compare.rescore"):
            from analysis.models import load_model
            try:
                step_value = float(step) if step.strip() else None
                with st.spinner("loading the model and scoring ..."):
                    res = cmp.rescore_run(state.store(), a, load_model(spec or None), checkpoint_step=step_value)
            except ValueError as e:
                st.error(md(f"checkpoint step {step!r} is not a number" if "could not convert" in str(e) else e))
            else:
                st.success(f"run {res.run_id}: {res.n_traces} traces re-scored ({res.same_tokens} on the original "
                           f"token ids, {res.retokenised} tokenised anew).")
                for n in res.notes:
                    st.info(md(n))
    if b is None:
        st.info("A comparison needs a second run.")
    else:
        try:
            c = state.cached(load_positions, a, b)
        except ThinkscopeError as e:
            st.info(md(e))
        else:
            names = (labels[a], labels[b])
            est = str(state.cached(state.traces, a)["estimator"].mode().iloc[0])
            for n in c.notes:
                st.warning(md(n))
            k1, k2, k3, k4 = st.columns(4)
            k1.metric("trace pairs on the same text", f"{c.pairs}")
            k2.metric("positions compared (% of A's)", f"{100 * c.aligned_share:.1f}%",
                      help="100 % when both runs hold the same tokens; less when B's tokenizer split the text "
                           "differently (positions where a token starts at the same character).")
            k3.metric("overlap of the top-20 % positions", f"{100 * c.overlap_top:.1f}%",
                      help="|top 20 % of A ∩ top 20 % of B| / |top 20 % of A|, each by its own 80th percentile.")
            k4.metric("Pearson r of H_A and H_B", "n/a" if pd.isna(c.correlation) else f"{c.correlation:.3f}")
            d = c.positions.dropna(subset=["h_a", "h_b"])
            st.plotly_chart(charts.scatter_figure(d["h_a"].to_numpy() * scale, d["h_b"].to_numpy() * scale, names,
                                                  unit, est), width="stretch", key="compare.scatter")
            bb = c.binned.assign(mean_diff=c.binned["mean_diff"] * scale)
            st.plotly_chart(charts.binned_change_figure(bb, names, unit, est), width="stretch", key="compare.binned")
            pair_ids = sorted(c.positions["trace_a"].unique().tolist())
            ta = st.selectbox("Trace (model A's)", pair_ids, key=f"compare.pair.{a}.{b}",
                              format_func=lambda t: f"trace {t}")
            one = c.positions[c.positions["trace_a"] == ta]
            st.plotly_chart(charts.pair_curves_figure(one, names, unit, est, scale), width="stretch",
                            key="compare.pair_curves")
            st.download_button("Download the positions (CSV)", c.positions.to_csv(index=False).encode("utf-8"),
                               file_name=f"positions_{a}_{b}.csv", mime="text/csv", key="compare.download")

# ---------------------------------------------------------------- checkpoints
with tab_steps:
    st.caption("Runs tagged with a checkpoint step form a series (The Entropy Mechanism, arXiv 2505.22617: "
               "entropy falls about 73 % in the first ~200 steps; accuracy R = −a·exp(H) + b).")
    with st.expander("Tag a run with its checkpoint step"):
        t1, t2, t3 = st.columns([2, 1, 1])
        tag_run = t1.selectbox("Run", ids, format_func=labels.get, key="compare.tag_run")
        current = cmp.checkpoint_step(runs.set_index("run_id").loc[tag_run, "settings"])
        step_text = t2.text_input("Step", "" if current is None else f"{current:g}", key=f"compare.tag_step.{tag_run}")
        if t3.button("Save step", key="compare.tag_save"):
            try:
                cmp.tag_checkpoint(state.store(), tag_run, float(step_text) if step_text.strip() else None)
            except ValueError:
                st.error(md(f"step {step_text!r} is not a number"))
            else:
                st.success(f"run {tag_run}: " + (f"checkpoint step {float(step_text):g}" if step_text.strip()
                                                   else "checkpoint step removed"))
                st.rerun()
    try:
        s = state.cached(load_series)
    except ThinkscopeError as e:
        st.info(md(e))
    else:
        for n in s.notes:
            st.info(md(n))
        st.plotly_chart(charts.checkpoint_figure(s.table, unit, s.estimator, scale), width="stretch",
                        key="compare.steps")
        st.plotly_chart(charts.accuracy_entropy_figure(s.table, s.fit, unit, s.estimator, scale), width="stretch",
                        key="compare.fit")
        if s.fit is not None:
            f = s.fit
            ci = (lambda lo, hi: "" if lo is None else f" (95% CI {lo:.3f} to {hi:.3f})")
            st.markdown(f"Fit over {f.n} checkpoints, H in nats: **a = {f.a:.3f}**{ci(f.a_low, f.a_high)}, "
                        f"**b = {f.b:.3f}**{ci(f.b_low, f.b_high)}; R² = {f.r2:.3f}.")
        tbl = s.table.assign(mean_entropy=s.table["mean_entropy"] * scale)
        st.dataframe(tbl.rename(columns={
            "mean_entropy": f"mean token entropy ({unit}, {s.estimator})", "accuracy": "accuracy (of graded)",
            "acc_low": "accuracy 95% low", "acc_high": "accuracy 95% high",
            "high_share": f"share with H ≥ {s.high_threshold * scale:.3f} {unit}", "entropy_change_pct": "entropy change vs first (%)"}),
            hide_index=True, width="stretch", key="compare.steps_table")
