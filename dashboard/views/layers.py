"""Layers: logit-lens entropy (arXiv 2502.16570) and attention entropy (arXiv 2605.07660) by layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from analysis import layer_stats as layers
from analysis.store import Store, json_settings
from dashboard import charts_layers as charts
from dashboard import state
from dashboard.tokens import label_token
from dashboard.trace_views import trace_layers
from dashboard.text import md

LABELLED_TOKENS = 120     # up to this many tokens the heatmap's x axis shows the token texts
MAX_HEATMAP_TOKENS = 800  # tokens drawn in one heatmap at most (a slider moves the window)
HOW_TO_RECORD = (
    "This run has no per-layer records. They are opt-in because they cost one extra forward pass "
    "per trace. Record a run with them:\n\n"
    "```\nthinkscope generate --logit-lens --attention-entropy --limit 8\n```\n\n"
    "`--lens-every N` keeps every N-th layer's logit lens (the last layer is always kept); "
    "`--head-layer L` picks the layer whose per-head attention entropy is kept (default: the middle "
    "one). From Python, set `logit_lens=True` / `attention_entropy=True` in `GenerationSettings` for "
    "`record_run` or `score_completion`.")


@st.cache_data(show_spinner=False, max_entries=16)
def layer_runs(path: str, version: int) -> pd.DataFrame:
    return Store(path).layer_runs()


@st.cache_data(show_spinner=False, max_entries=16)
def layer_trace_ids(path: str, version: int, run_id: int) -> list[int]:
    return Store(path).layer_trace_ids(run_id)


@st.cache_data(show_spinner=False, max_entries=16)
def layer_profiles(path: str, version: int, run_id: int, field: str) -> pd.DataFrame:
    return Store(path).layer_profiles(run_id, field)


# ---------------------------------------------------------------- sections (fragments: a control
# re-runs only its own section)
@st.fragment
def heatmaps(trace_id: int, unit: str, boundary: int, lens_layer_ids: list[int], attn_layer_ids: list[int],
             head_layer) -> None:
    """Layer x position heatmaps: their controls re-run only this part."""
    tl = state.cached(trace_layers, trace_id)
    n = tl.n
    start, stop = 0, n
    if n > LABELLED_TOKENS:
        start, stop = st.slider("Tokens shown", 0, n, (0, LABELLED_TOKENS), step=10, key=f"layers.range.{trace_id}",
                                help=f"At most {MAX_HEATMAP_TOKENS} tokens are drawn at once; the tick labels "
                                     "under the heatmap show every token, or every k-th when many are shown.")
        if stop - start > MAX_HEATMAP_TOKENS:
            stop = start + MAX_HEATMAP_TOKENS
            st.caption(f"Showing tokens {start}–{stop - 1} ({MAX_HEATMAP_TOKENS} at most at once).")
    shown = tl.tokens[start:stop]
    if tl.lens is not None:
        top1 = tl.top1[start:stop] if tl.top1 is not None else None
        fig = charts.layer_heatmap(state.convert(tl.lens[start:stop], unit), lens_layer_ids, shown,
                                   "logit-lens entropy", unit, charts.LENS_ESTIMATOR, top1=top1,
                                   offset=start, boundary=boundary)
        st.plotly_chart(fig, width="stretch", theme=None, key="layers.lens_heatmap")
        st.caption("Hover a cell for that layer's top-1 token. The last layer is the model's own prediction, so "
                   "its entropy is the token entropy at T = 1.")
    if tl.attn is not None:
        variant = st.radio("Attention entropy", ["raw", "normalised"], horizontal=True, key="layers.attn_variant",
                           format_func={"raw": "raw (mean over heads)",
                                        "normalised": "normalised by ln(t+1) (1 = uniform over visible tokens)"}.get)
        if variant == "raw":
            fig = charts.layer_heatmap(state.convert(tl.attn[start:stop], unit), attn_layer_ids, shown,
                                       "attention entropy", unit, "mean over heads", offset=start,
                                       boundary=boundary)
        else:
            fig = charts.layer_heatmap(tl.attn_norm[start:stop], attn_layer_ids, shown,
                                       "attention entropy / ln(t+1)", "ratio", "mean over heads", offset=start,
                                       zmax=1.0, boundary=boundary)
        st.plotly_chart(fig, width="stretch", theme=None, key="layers.attn_heatmap")
        # a toggle, not an expander: an expander's content is computed even when closed
        if tl.heads is not None and st.toggle(f"Per head, layer {md(head_layer)}", key="layers.show_heads"):
            st.plotly_chart(charts.head_heatmap(state.convert(tl.heads[start:stop], unit), shown,
                                                head_layer, unit, offset=start),
                            width="stretch", theme=None, key="layers.head_heatmap")


@st.cache_resource(show_spinner=False, max_entries=32)
def comparison_chart(path: str, version: int, run_id: int, field: str, by: str, unit: str, quantity: str,
                     layer_ids: tuple[int, ...]):
    """The chart comparing groups of the run's traces, None when there are no groups. It is the same
    for every trace of the run, so it is built once, not again at every trace picked (st.plotly_chart
    copies the figure; nothing changes it)."""
    traces = state.traces(path, version, run_id)
    traces = traces[traces.trace_id.isin(layer_trace_ids(path, version, run_id))].reset_index(drop=True)
    prof = layer_profiles(path, version, run_id, field)
    if by == "trace":
        labels = pd.Series({int(r.trace_id): state.trace_label(r, with_entropy=False) for r in traces.head(12).itertuples()})
    else:
        labels = layers.group_labels(traces, by)
    grouped = layers.profile_groups(prof, labels, list(layer_ids))
    if grouped.empty:
        return None
    if field != "attn_entropy_norm":
        for col in ("mean", "lo", "hi"):
            grouped[col] = state.convert(grouped[col].to_numpy(dtype=np.float64), unit)
    if by == "trace":
        grouped[["lo", "hi"]] = np.nan
    shown_unit = "ratio" if field == "attn_entropy_norm" else unit
    return charts.layer_profile(grouped, quantity, shown_unit, "mean over tokens per trace")


@st.fragment
def comparisons(run_id: int, fields: dict, unit: str) -> None:
    """Mean profiles of groups of traces: the controls re-run only this part."""
    c1, c2 = st.columns(2)
    field = c1.selectbox("Quantity", list(fields), format_func=lambda f: fields[f][0], key="layers.field")
    by = c2.radio("Compare", ["trace", "difficulty", "correct"], horizontal=True, key="layers.by",
                  format_func={"trace": "traces", "difficulty": "difficulty bins",
                               "correct": "correct vs incorrect"}.get)
    quantity, layer_ids = fields[field]
    fig = state.cached(comparison_chart, int(run_id), field, by, unit, quantity, tuple(int(k) for k in layer_ids))
    if fig is None:
        st.caption("No traces to compare here" + (" (this run is not graded)." if by == "correct" else "."))
        return
    st.plotly_chart(fig, width="stretch", theme=None, key="layers.compare")
    if by == "trace":
        st.caption("One line per trace (the first 12), each its mean over tokens; band: none.")
    elif by == "difficulty":
        st.caption("Difficulty: the problem set's level, else the pass rate over samples (ARES buckets); mean over "
                   "traces with a 95% interval.")
    else:
        st.caption("Correct vs incorrect traces (graded runs); mean over traces with a 95% interval.")


@st.fragment
def anchors_explorers(trace_id: int, unit: str, attn_layer_ids: list[int]) -> None:
    """The anchor/explorer split of this trace's tokens: the controls re-run only this part."""
    tl = state.cached(trace_layers, trace_id)
    attn, attn_norm, token_h, token_est, n = tl.attn, tl.attn_norm, tl.token_h, tl.token_est, tl.n
    c1, c2, c3 = st.columns(3)
    which = c1.selectbox("Attention layer", ["mean"] + attn_layer_ids, key="layers.split_layer",
                         format_func=lambda v: "mean over layers" if v == "mean" else f"layer {v}")
    normalised = c2.toggle("Normalise by ln(t+1)", value=True, key="layers.split_norm",
                           help="Raw attention entropy grows with position (more tokens to attend to); "
                                "normalised, early and late tokens compare fairly.")
    pct = c3.slider("Percentile for each group", 5, 50, 20, 5, key="layers.split_pct",
                    help="Anchors: at or below this percentile; explorers: at or above 100 minus it.")
    src = attn_norm if normalised else attn
    with np.errstate(all="ignore"):
        a = np.nanmean(src, axis=1) if which == "mean" else src[:, attn_layer_ids.index(which)]
    groups = layers.split_anchors_explorers(a, float(pct))
    attn_label = ("attention entropy / ln(t+1) (ratio" if normalised else f"attention entropy ({unit}") + \
        (", mean over heads and layers)" if which == "mean" else f", mean over heads, layer {which})")
    a_shown = a if normalised else state.convert(a, unit)
    m = st.columns(3)
    for col, g in zip(m, ("anchor", "middle", "explorer")):
        sel = groups == g
        v = np.nanmean(token_h[sel]) if sel.any() else np.nan
        col.metric(f"{ {'anchor': 'anchors', 'middle': 'middle', 'explorer': 'explorers'}[g]}: mean token entropy", "n/a" if np.isnan(v) else f"{state.convert(v, unit):.3f} {unit}",
                   help=f"{int(sel.sum())} tokens; token entropy estimator {token_est}.")
    st.plotly_chart(charts.anchors_explorers_density(a_shown, state.convert(token_h, unit), groups, attn_label,
                                                     unit, token_est),
                    width="stretch", theme=None, key="layers.split_scatter")
    table = pd.DataFrame({"position": np.arange(n), "token": [label_token(t) for t in tl.tokens], "group": groups,
                          attn_label: a_shown, f"token entropy H ({unit}, {token_est})": state.convert(token_h, unit)})
    t1, t2 = st.columns(2)
    t1.markdown("**Anchors** (lowest attention entropy)")
    t1.dataframe(table[table.group == "anchor"].sort_values(attn_label).head(50), hide_index=True,
                 width="stretch")
    t2.markdown("**Explorers** (highest attention entropy)")
    t2.dataframe(table[table.group == "explorer"].sort_values(attn_label, ascending=False).head(50),
                 hide_index=True, width="stretch")


st.title("Layers")
st.caption("Inside the model: the logit-lens entropy of every layer (Entropy-Lens, arXiv 2502.16570) and "
           "the entropy of each token's attention (anchors and explorers, arXiv 2605.07660).")

run_id = state.select_run("layers.run")
if run_id is None:
    st.stop()
with_layers = state.cached(layer_runs)
if run_id not in set(with_layers["run_id"].tolist()):
    st.info(HOW_TO_RECORD)
    if not with_layers.empty:
        st.caption("Runs with per-layer records: " + ", ".join(f"#{r}" for r in with_layers["run_id"]))
    st.stop()

traces = state.cached(state.traces, run_id)
ids = state.cached(layer_trace_ids, int(run_id))
traces = traces[traces.trace_id.isin(ids)].reset_index(drop=True)

trace_id = state.select_trace(traces, "layers.trace", with_entropy=False)
row = traces.loc[traces.trace_id == trace_id].iloc[0]
info = json_settings(row.metadata).get("layer_info", {})
tl = state.cached(trace_layers, int(trace_id))
n = tl.n
unit = state.unit()
lens, attn = tl.lens, tl.attn
n_layers = int(info.get("n_layers") or (attn.shape[1] if attn is not None else lens.shape[1]))
lens_layer_ids = info.get("lens_layers") or (list(range(1, lens.shape[1] + 1)) if lens is not None else [])
attn_layer_ids = info.get("attn_layers") or (list(range(1, attn.shape[1] + 1)) if attn is not None else [])
token_est, token_h = tl.token_est, tl.token_h

recorded = []
if lens is not None:
    every = np.diff(lens_layer_ids).min() if len(lens_layer_ids) > 1 else 1
    recorded.append(f"logit lens at {len(lens_layer_ids)} of {n_layers} layers"
                    + (f" (every {every}th, and the last)" if every > 1 else ""))
if attn is not None:
    recorded.append(f"attention entropy at all {len(attn_layer_ids)} layers, per head at layer "
                    f"{md(info.get('head_layer', '?'))}")
st.caption("Recorded: " + "; ".join(recorded) + ". Row i is read at the position that predicted token i.")

# ---------------------------------------------------------------- heatmaps
st.subheader("Layer × token position")
heatmaps(int(trace_id), unit, int(row.boundary), lens_layer_ids, attn_layer_ids, info.get("head_layer", "?"))

# ---------------------------------------------------------------- this trace's profile
st.subheader("Entropy profile of this trace")
cols = st.columns(2 if lens is not None and attn is not None else 1)
c = 0
if lens is not None:
    m = np.nanmean(lens, axis=0)
    sd = np.nanstd(lens, axis=0)
    df = pd.DataFrame({"group": "mean over tokens ± 1 sd", "layer": lens_layer_ids,
                       "mean": state.convert(m, unit), "lo": state.convert(m - sd, unit),
                       "hi": state.convert(m + sd, unit),
                       "n": np.isfinite(lens).sum(0)})
    ref = {f"mean token entropy ({token_est})": float(state.convert(np.nanmean(token_h), unit))} if n else None
    cols[c].plotly_chart(charts.layer_profile(df, "logit-lens entropy", unit, "mean over tokens", ref),
                         width="stretch", theme=None, key="layers.lens_profile")
    c += 1
if attn is not None:
    m = np.nanmean(attn, axis=0)
    df = pd.DataFrame({"group": "raw, mean over tokens", "layer": attn_layer_ids, "mean": state.convert(m, unit),
                       "n": np.isfinite(attn).sum(0)})
    cols[c].plotly_chart(charts.layer_profile(df, "attention entropy", unit, "mean over heads and tokens"),
                         width="stretch", theme=None, key="layers.attn_profile")

# ---------------------------------------------------------------- comparisons
st.subheader("Profiles compared")
fields = {}
if lens is not None:
    fields["lens_entropy"] = ("logit-lens entropy", lens_layer_ids)
if attn is not None:
    fields["attn_entropy"] = ("attention entropy", attn_layer_ids)
    fields["attn_entropy_norm"] = ("attention entropy / ln(t+1)", attn_layer_ids)
comparisons(int(run_id), fields, unit)

# ---------------------------------------------------------------- anchors and explorers
if attn is not None:
    st.subheader("Anchors and explorers")
    st.caption("Tokens split by attention entropy within this trace (arXiv 2605.07660): anchors draw on "
               "concentrated context, explorers on diffuse context. Compare their token entropies.")
    anchors_explorers(int(trace_id), unit, attn_layer_ids)
