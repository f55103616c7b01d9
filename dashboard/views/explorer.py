"""Trace explorer: a trace's text coloured by entropy, its entropy curve and forking points."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import streamlit as st

from analysis import metrics
from analysis.store import ENTROPY_COLUMNS
from dashboard import charts, state

MAX_TEXT_TOKENS = 1500  # tokens rendered as coloured text at once (the curve always has all)

st.title("Trace explorer")

run_id = state.select_run("explorer.run")
if run_id is None:
    st.stop()
traces = state.cached(state.traces, run_id)
if traces.empty:
    st.info("This run has no traces yet.")
    st.stop()

trace_id = state.select_trace(traces, "explorer.trace")
st.session_state["explorer.trace_id"] = trace_id
row = traces.loc[traces.trace_id == trace_id].iloc[0]
tok = state.cached(state.tokens, int(trace_id))
n = len(tok)

# ---------------------------------------------------------------- controls
available = [e for e, col in ENTROPY_COLUMNS.items() if col in tok and tok[col].notna().any()]
if not available:
    st.warning("This trace has no entropy values: its source gave neither logits nor top-k logprobs. "
               "Re-score it with a local model (Upload page, plain-text traces).")
    st.stop()
unit = state.unit()
c1, c2, c3, c4 = st.columns([1.2, 1, 1.4, 1.2])
estimator = c1.selectbox(
    "Estimator", available, index=0, key="explorer.estimator",
    help="\n".join(f"- **{e}**: {metrics.ESTIMATORS[e]}" for e in available))
w = c2.slider("Window w (tokens)", 1, 32, 4, key="explorer.w",
              help="Window entropy at t = mean entropy of tokens t+1 .. t+w (ARES, arXiv 2510.08457).")
method = c3.radio("Forking threshold τ", ["percentile", "corpus", "fixed"], horizontal=True,
                  key="explorer.method",
                  format_func={"percentile": "per-trace percentile", "corpus": "run top-%",
                               "fixed": "fixed value"}.get,
                  help="Per-trace percentile of window entropy (ARES uses 95); the top p% of the run's "
                       "window entropies (Beyond the 80/20 rule, arXiv 2506.01939, uses 20%); or a fixed value.")
h = tok[ENTROPY_COLUMNS[estimator]].to_numpy(dtype=np.float64, na_value=np.nan)
win = metrics.window_entropy(h, w).values
if method == "percentile":
    value = c4.slider("Percentile", 50.0, 100.0, 95.0, 0.5, key="explorer.pct")
    tau = metrics.forking_threshold(win, "percentile", value)
elif method == "corpus":
    value = c4.slider("Top % of the run's tokens", 1.0, 50.0, 20.0, 1.0, key="explorer.top")
    corpus = state.cached(state.run_window_entropy, int(run_id), estimator, int(w))
    tau = metrics.forking_threshold(win, "corpus", value, corpus=corpus)
else:
    top = float(np.nanmax(state.convert(win))) if np.isfinite(win).any() else 1.0
    value_disp = c4.slider(f"τ ({unit})", 0.0, max(round(top, 2), 0.01), min(1.0, top) / 1.0,
                           0.01, key=f"explorer.fixed.{unit}")
    value = value_disp * (metrics.LN2 if unit == "bits" else 1.0)
    tau = metrics.forking_threshold(win, "fixed", value)

with st.expander("Restrict forking points to discourse tokens (lexicon)"):
    use_lex = st.toggle("Only tokens in the lexicon", value=False, key="explorer.use_lexicon")
    lex_text = st.text_area("Lexicon (one entry per line; case-insensitive; the tokenizer's space "
                            "marker is stripped)", "\n".join(metrics.DEFAULT_LEXICON), height=160,
                            key="explorer.lexicon")
lexicon = [x for x in lex_text.splitlines() if x.strip()] if use_lex else None
tokens = tok["token"].fillna("").tolist()
forks = metrics.forking_points(win, tau, tokens, lexicon)
boundary = int(row.boundary)

# ---------------------------------------------------------------- summary
m = st.columns(5)
m[0].metric("Tokens", f"{n}")
for col, phase in zip(m[1:4], metrics.PHASES):
    v = metrics.sequence_entropy(h, boundary, phase)
    col.metric(f"Mean H, {phase} ({unit})", "n/a" if np.isnan(v) else f"{state.convert(v):.3f}",
               help=f"Sequence entropy: mean token entropy over the {phase} tokens; estimator {estimator}.")
m[4].metric("Forking points", f"{len(forks)}", help=f"window entropy ≥ τ = {state.convert(tau):.3f} {unit}")

# ---------------------------------------------------------------- curve
fig = charts.entropy_curve(tokens, state.convert(h), state.convert(win),
                           float(state.convert(tau)) if np.isfinite(tau) else None,
                           forks, unit, estimator, w, boundary)
st.plotly_chart(fig, width="stretch", key="explorer.curve")
if boundary < n:
    st.caption(f"Thinking: tokens 0–{boundary - 1}; answer: tokens {boundary}–{n - 1} "
               f"(split after the marker).")
else:
    st.caption("No end-of-thinking marker in this trace: every token counts as thinking.")

# ---------------------------------------------------------------- coloured text
st.subheader("Text coloured by token entropy")
start, stop = 0, n
if n > MAX_TEXT_TOKENS:
    start, stop = st.slider("Tokens shown", 0, n, (0, MAX_TEXT_TOKENS), step=50, key="explorer.range")
shown = tok.iloc[start:stop]
finite = h[np.isfinite(h)]
vmax = float(np.percentile(state.convert(finite), 99)) if finite.size else 1.0
alts = [list(zip(t, lp)) if t is not None else [] for t, lp in zip(shown["topk_tokens"], shown["topk_logprobs"])]
with st.container(border=True):
    if row.prompt:
        st.markdown("**Prompt**")
        st.html('<div style="white-space: pre-wrap; color:#4b5563; font-size:0.9rem;">'
                + html.escape(str(row.prompt)) + "</div>")
        st.markdown("**Completion**")
    st.html(charts.token_html(shown["token"].fillna("").tolist(), state.convert(h[start:stop]), vmax, unit,
                              estimator, alts, set(int(f) for f in forks), boundary, offset=start))
st.html(charts.colorbar_html(vmax, unit, estimator))

# ---------------------------------------------------------------- forking table
st.subheader("Forking points")
if len(forks) == 0:
    st.caption("No position reaches the threshold.")
else:
    text = "".join(tokens)
    starts = np.concatenate([[0], np.cumsum([len(t) for t in tokens])])
    rows = []
    for f in forks:
        a, b = int(starts[f]), int(starts[f + 1])
        rows.append({"position": int(f), "token": tokens[f] if tokens[f].strip() else repr(tokens[f]),
                     f"window entropy ({unit})": float(state.convert(win[f])),
                     f"token entropy ({unit})": float(state.convert(h[f])),
                     "context": (text[max(0, a - 40):a] + "⟦" + text[a:b] + "⟧" + text[b:b + 60]).replace("\n", " ")})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
st.caption(f"Estimator: {estimator} — {metrics.ESTIMATORS[estimator]}.")

if len(available) > 1 and "full" in available:
    with st.expander("How much do top-k estimators miss? (this trace, token by token)"):
        cmp = pd.DataFrame({e: state.convert(tok[ENTROPY_COLUMNS[e]].to_numpy(dtype=float, na_value=np.nan))
                            for e in available})
        st.plotly_chart(charts.estimator_comparison(cmp, unit), width="stretch")
        k = int(row.k)
        st.caption(f"Top-{k} estimators against the full entropy; points below y = x underestimate.")
