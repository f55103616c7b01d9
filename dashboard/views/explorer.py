"""Trace explorer: a trace's text coloured by entropy, its entropy curve and forking points."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import streamlit as st

from analysis import forking, metrics
from dashboard import charts, state
from dashboard.line_chart import line_chart
from dashboard import tokens as token_text
from dashboard.trace_views import comparison_figure, text_html, trace_text

MAX_TEXT_TOKENS = 1500  # tokens rendered as coloured text at once (the curve always has all)


def text_range(trace_id: int, n: int) -> tuple[int, int]:
    """The tokens shown as text (the slider's last value; all of a short trace)."""
    return st.session_state.get(f"explorer.range.{trace_id}", (0, min(n, MAX_TEXT_TOKENS)))


@st.fragment
def forking_points_section(run_id: int, trace_id: int, estimator: str, unit: str, boundary: int) -> None:
    """Threshold controls, summary, curve and forking points: a control here re-runs only this part."""
    tt = state.cached(trace_text, int(trace_id))
    h = tt.entropy[estimator]
    n = tt.n
    c1, c2, c3 = st.columns([1, 1.4, 1.2])
    w = c1.slider("Window w (tokens)", 1, 32, 4, key="explorer.w",
                  help="Window entropy at t = mean entropy of tokens t+1 .. t+w (ARES, arXiv 2510.08457).")
    method = c2.radio("Forking threshold τ", ["percentile", "corpus", "fixed"], horizontal=True,
                      key="explorer.method",
                      format_func={"percentile": "per-trace percentile", "corpus": "run top-%",
                                   "fixed": "fixed value"}.get,
                      help="Per-trace percentile of window entropy (ARES uses 95); the top p% of the run's "
                           "window entropies (Beyond the 80/20 rule, arXiv 2506.01939, uses 20%); or a fixed "
                           "value.")
    win = metrics.window_entropy(h, w).values
    corpus = None
    if method == "percentile":
        value = c3.slider("Percentile", 50.0, 100.0, 95.0, 0.5, key="explorer.pct")
    elif method == "corpus":
        value = c3.slider("Top % of the run's tokens", 1.0, 50.0, 20.0, 1.0, key="explorer.top")
        corpus = state.cached(state.run_window_entropy, int(run_id), estimator, int(w))
    else:
        top = float(np.nanmax(state.convert(win, unit))) if np.isfinite(win).any() else 1.0
        value_disp = c3.slider(f"τ ({unit}, {estimator})", 0.0, max(round(top, 2), 0.01), min(1.0, top),
                               0.01, key=f"explorer.fixed.{trace_id}.{estimator}.{unit}")
        value = value_disp / metrics.unit_scale(unit)

    with st.expander("Restrict forking points to discourse tokens (lexicon)"):
        use_lex = st.toggle("Only tokens in the lexicon", value=False, key="explorer.use_lexicon")
        lex_text = st.text_area("Lexicon (one entry per line; case-insensitive; the tokenizer's space "
                                "marker is stripped)", "\n".join(metrics.DEFAULT_LEXICON), height=160,
                                key="explorer.lexicon")
    lexicon = tuple(x for x in lex_text.splitlines() if x.strip()) if use_lex else None
    found = forking.find_forks(tt.tokens, h, forking.ForkSettings(estimator, int(w), method, float(value), lexicon),
                               corpus)
    forks, tau, reaching = found.table["position"].to_numpy(), found.tau, found.reaching

    # ------------------------------------------------------------ summary
    m = st.columns(5)
    m[0].metric("Tokens", f"{n}")
    for col, phase in zip(m[1:4], metrics.PHASES):
        v = metrics.sequence_entropy(h, boundary, phase)
        col.metric(f"Mean H, {phase} ({unit})", "n/a" if np.isnan(v) else f"{state.convert(v, unit):.3f}",
                   help=f"Sequence entropy: mean token entropy over the {phase} tokens, in {unit}; "
                        f"estimator {estimator}.")
    tau_shown = float(state.convert(tau, unit)) if np.isfinite(tau) else None
    m[4].metric("Forking points", f"{len(forks)}",
                help=(f"window entropy (next {w} tokens, {unit}, {estimator}) ≥ τ = {tau_shown:.3f} {unit}"
                      if tau_shown is not None else "no threshold: no finite window entropy"))
    conditions = metrics.conditions_text(estimator, state.cached(state.run_settings, int(run_id)))
    st.caption(f"Entropies in {unit}, estimator {estimator}: {metrics.ESTIMATORS[estimator]}; "
               f"{conditions}.")

    # ------------------------------------------------------------ curve
    fig = charts.entropy_curve_spec(tt.labels, state.convert(h, unit), state.convert(win, unit), tau_shown,
                               forks, unit, estimator, w, boundary, conditions=conditions)
    line_chart(fig, key=f"explorer.curve.{trace_id}")  # a zoom belongs to its trace
    if boundary < n:
        st.caption(f"Thinking: tokens 0–{boundary - 1}; answer: tokens {boundary}–{n - 1} "
                   f"(split after the marker).")
    else:
        st.caption("No end-of-thinking marker in this trace: every token counts as thinking.")

    # ------------------------------------------------------------ forking table
    st.subheader("Forking points")
    start, stop = text_range(trace_id, n)
    in_text = forks[(forks >= start) & (forks < stop)]
    if len(forks) == 0:
        if lexicon is not None and reaching:
            st.caption(f"{reaching} positions reach the threshold, but none is a lexicon token: "
                       "edit the lexicon or turn the restriction off.")
        else:
            st.caption("No position reaches the threshold.")
    else:
        # the outlines in the text below: a style rule, so the text itself is not re-sent
        st.html(token_text.fork_marks_css(in_text) + '<div style="font-size:0.8rem;color:#4b5563;">'
                f"{len(in_text)} of them in the text shown below (tokens {start}–{stop - 1}), outlined.</div>")
        t = found.table
        st.dataframe(pd.DataFrame({
            "position": t["position"],
            "token": [token_text.label_token(x) for x in t["token"]],
            f"window entropy (next {w}; {unit}, {estimator})": state.convert(t["window_entropy"].to_numpy(), unit),
            f"token entropy H ({unit}, {estimator})": state.convert(t["token_entropy"].to_numpy(), unit),
            # relative, so that a dashboard served under a path prefix keeps it
            "branches": [f"branches?run={int(run_id)}&trace={int(trace_id)}&pos={int(p)}" for p in t["position"]],
            "context": t["context"]}),
            hide_index=True, width="stretch",
            column_config={"branches": st.column_config.LinkColumn(
                "branches", display_text="branch here ↗",
                help="Open this position on the Branches page: roll out its alternatives and see whether "
                     "the answer forks there.")})


# ---------------------------------------------------------------- page
st.title("Trace explorer")

run_id = state.select_run("explorer.run")
if run_id is None:
    st.stop()
traces = state.cached(state.traces, run_id)
if traces.empty:
    st.info("This run has no traces yet.")
    st.stop()

trace_id = state.select_trace(traces, "explorer.trace")
row = traces.loc[traces.trace_id == trace_id].iloc[0]
tt = state.cached(trace_text, int(trace_id))
n = tt.n

available = list(tt.entropy)
if not available:
    st.warning("This trace has no entropy values: its source gave neither logits nor top-k logprobs. "
               "Re-score it with a local model (Upload page, plain-text traces).")
    st.stop()
unit = state.unit()
if st.session_state.get("explorer.estimator", available[0]) not in available:  # from another trace
    del st.session_state["explorer.estimator"]
estimator = st.columns([1.2, 3.8])[0].selectbox(
    "Estimator", available, index=0, key="explorer.estimator",
    help="\n".join(f"- **{e}**: {metrics.ESTIMATORS[e]}" for e in available))
boundary = int(row.boundary)

forking_points_section(int(run_id), int(trace_id), estimator, unit, boundary)

# ---------------------------------------------------------------- coloured text
st.subheader("Text coloured by token entropy")
start, stop = 0, n
if n > MAX_TEXT_TOKENS:
    start, stop = st.slider("Tokens shown", 0, n, (0, MAX_TEXT_TOKENS), step=50,
                            key=f"explorer.range.{trace_id}")
body, vmax = state.cached(text_html, int(trace_id), estimator, int(start), int(stop), boundary)
with st.container(border=True):
    if row.prompt:
        st.markdown("**Prompt**")
        st.html('<div style="white-space: pre-wrap; color:#374151; font-size:0.9rem;">'
                + html.escape(str(row.prompt)) + "</div>")
        st.markdown("**Completion**")
    st.html(body)
st.html(token_text.colorbar_html(float(state.convert(vmax, unit)), unit, estimator))

if len(available) > 1 and "full" in available:
    # drawn on request: a scatter of every token per estimator is the page's heaviest chart
    if st.toggle("How much do top-k estimators miss? (this trace, token by token)", value=False,
                 key="explorer.compare_estimators"):
        st.plotly_chart(state.cached(comparison_figure, int(trace_id), unit), width="stretch", theme=None)
        st.caption(f"Top-{int(row.k)} estimators against the full entropy; points below y = x underestimate.")
