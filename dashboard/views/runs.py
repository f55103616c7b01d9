"""Runs: every run in the store, with its model, source, counts and mean entropy."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.runs import delete_run
from analysis.store import json_settings
from dashboard import charts, state

st.title("Runs")
st.caption("Every run in the store: traces generated here, uploaded trace files and the demo traces.")

runs = state.cached(state.runs)
if runs.empty:
    st.info("The store has no runs yet. Load the demo traces with `thinkscope demo`, generate with "
            "`thinkscope generate`, or upload a trace file.")
    st.stop()

unit = state.unit()
table = pd.DataFrame({
    "run": runs["run_id"],
    "name": runs["name"],
    "traces": runs["n_traces"].astype(int),
    "tokens": runs["n_tokens"].astype(int),
    f"mean entropy ({unit})": state.convert(runs["mean_entropy"].astype(float)),
    "estimator": runs["estimator"],
    "source": runs["source"],
    "model": runs["model"],
    "status": runs["status"],
    "created (UTC)": runs["created_at"],
})
st.dataframe(table, hide_index=True, width="stretch",
             column_config={f"mean entropy ({unit})": st.column_config.NumberColumn(format="%.3f")})
st.caption("Mean entropy: the mean over a run's traces of the sequence entropy (mean token entropy of "
           "the completion), with each trace's best estimator: `full` for local models, `topk_renorm` "
           "for top-k logprob dumps.")

stats = state.cached(state.trace_stats_all)
if not stats.empty:
    st.subheader("Sequence entropy per trace")
    labels = {r.run_id: f"#{r.run_id} {r.name}"[:40] for r in runs.itertuples()}
    stats = stats.assign(label=stats["run_id"].map(labels), value=state.convert(stats["mean_entropy"]))
    st.plotly_chart(charts.run_entropy_box(stats, unit), width="stretch")

with st.expander("Run details and settings", expanded=state.SHARED_RUN in st.session_state):
    run_id = state.select_run("runs.detail", runs)
    details = json_settings(runs.loc[runs.run_id == run_id, "settings"].iloc[0])
    if details.get("n_failed"):  # requests to an inference server that failed for good (analysis.server)
        st.warning(f"{int(details['n_failed'])} request(s) of this run failed for good; each is listed with its "
                   f"reason under `failed` below, and `thinkscope generate --resume {int(run_id)}` retries them.")
    st.json(details)
    c1, c2 = st.columns(2)
    if c1.button("Open in the trace explorer", key="runs.open"):
        state.open_page("views/explorer.py", run_id)
    with c2.popover("Delete run"):
        st.write("This removes the run and all its traces from the store.")
        if st.button("Delete for good", type="primary", key="runs.delete"):
            delete_run(state.store(), int(run_id))
            if st.session_state.get(state.SHARED_RUN) == run_id:
                state.forget()
            st.cache_data.clear()
            st.rerun()
