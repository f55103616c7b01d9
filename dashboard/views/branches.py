"""Branches: what happens if the model had taken another token here? Fork strength at swept
positions next to window entropy, each position's branches and outcomes, the survival curve,
and whether entropy predicts the positions where the outcome really forks."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from analysis import branch as br
from analysis import metrics
from analysis.store import Store
from dashboard import state
from dashboard import tokens as token_text
from dashboard.text import chart, md
from dashboard.trace_views import trace_text

#: rollouts' texts shown per branch
SHOW_ROLLOUTS = 4
#: tokens of the parent's text before t shown ahead of each rollout
CONTEXT_TOKENS = 12


@st.cache_data(show_spinner=False, max_entries=32)
def positions(path: str, version: int, trace_id: int, eps: float):
    table, stats = br.position_table(Store(path), trace_id, eps)
    return table, {p: {"categories": s.categories, "branches": s.branches, "fork": s.fork_strength,
                       "interval": s.fork_interval} for p, s in stats.items()}


@st.cache_data(show_spinner=False, max_entries=16)
def rollouts(path: str, version: int, trace_id: int) -> pd.DataFrame:
    return Store(path).branch_rollouts(trace_id)


@st.cache_data(show_spinner=False, max_entries=16)
def predictors(path: str, version: int, run_id: int, eps: float, w: int, tau: float) -> pd.DataFrame:
    return br.fork_predictors(Store(path), run_id, eps, w, tau)


@st.cache_resource(show_spinner="Loading the model ...", max_entries=2)
def get_model(spec: str):
    from analysis.models import load_model
    return load_model(spec or None)


@st.cache_data(show_spinner=False, max_entries=8)
def measured_rate(path: str, version: int, trace_id: int, model: str, rows: int) -> dict:
    return br.measure_rate(get_model(model), br.load_parent(Store(path), trace_id), rows)


def fmt(x, lo=None, hi=None) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:.2f}" + ("" if lo is None or lo != lo else f" [{lo:.2f}, {hi:.2f}]")


def linked_text(tokens, values, vmax, unit, estimator, alternatives, marks, run_id: int, trace_id: int) -> str:
    """The coloured text with every token a link that opens its branches (?pos=t)."""
    body = str(token_text.token_spans(tokens, values, vmax, unit, estimator, alternatives, marks=marks))
    return re.sub(r'<span class="tok" data-pos="(\d+)"(.*?)</span>',
                  lambda m: (f'<a class="tok" href="?run={run_id}&amp;trace={trace_id}&amp;pos={m[1]}" '
                             f'target="_self" data-pos="{m[1]}"{m[2]}</a>'), body, flags=re.S)


def fork_chart(table: pd.DataFrame, labels, win: np.ndarray, unit: str, estimator: str, w: int,
               selected: int | None) -> go.Figure:
    fig = go.Figure()
    x = np.arange(len(win))
    fig.add_trace(go.Scatter(x=x, y=state.convert(win, unit), mode="lines", name=f"window entropy (next {w}, {unit}, {estimator})",
                             line=dict(color="#94a3b8"), text=labels, hovertemplate="t=%{x} %{text}<br>%{y:.3f}"))
    if len(table):
        fig.add_trace(go.Scatter(
            x=table["pos"], y=table["fork_strength"], mode="markers", name="fork strength (p mass)", yaxis="y2",
            marker=dict(size=9, color=table["fork_strength"], colorscale="Reds", cmin=0, cmax=1,
                        line=dict(width=1, color="#111827")),
            error_y=dict(type="data", symmetric=False, array=table["fork_hi"] - table["fork_strength"],
                         arrayminus=table["fork_strength"] - table["fork_lo"], color="#b91c1c", thickness=1),
            hovertemplate="t=%{x}<br>fork strength %{y:.2f}<extra></extra>"))
    if selected is not None:
        fig.add_vline(x=selected, line=dict(color="#2563eb", dash="dot"))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=1.15),
                      xaxis_title="token position t", yaxis_title=f"window entropy ({unit}, {estimator})",
                      yaxis2=dict(title="fork strength", overlaying="y", side="right", range=[0, 1.05]))
    return fig


def sankey(pos_stats: dict) -> go.Figure:
    """Alternatives (left, weighted by p at t) to their outcome distributions (right)."""
    cats = pos_stats["categories"]
    rows = [b for b in pos_stats["branches"] if b["kind"] != "fresh"]
    left = [f"{b['kind'][:4]} {chart(token_text.label_token(b['token'] or ''))} (p={b['p']:.2f})" for b in rows]
    labels = left + [chart(c) for c in cats]
    src, dst, val = [], [], []
    for i, b in enumerate(rows):
        for j, s in enumerate(b["shares"]):
            if s > 0:
                src.append(i)
                dst.append(len(rows) + j)
                val.append(b["p"] * s)
    fig = go.Figure(go.Sankey(node=dict(label=labels, pad=12, thickness=14),
                              link=dict(source=src, target=dst, value=val)))
    fig.update_layout(height=max(220, 40 * len(labels)), margin=dict(l=10, r=10, t=30, b=10),
                      title="forced token at t (weight: p at t) → outcome (share of its rollouts)")
    return fig


def survival_chart(table: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=table["pos"], y=table["survival_hi"], mode="lines", line=dict(width=0),
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=table["pos"], y=table["survival_lo"], mode="lines", line=dict(width=0),
                             fill="tonexty", fillcolor="rgba(37,99,235,0.15)", name="95 % interval"))
    fig.add_trace(go.Scatter(x=table["pos"], y=table["survival"], mode="lines+markers", name="survival S_t",
                             line=dict(shape="hv", color="#2563eb")))
    fig.add_trace(go.Bar(x=table["pos"], y=table["hazard"], name="hazard (fork strength)", marker_color="#fca5a5",
                         opacity=0.7))
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=30, b=10), yaxis=dict(range=[0, 1.05]),
                      xaxis_title="swept position t", legend=dict(orientation="h", y=1.15))
    return fig


def branch_form(run_id: int, trace_id: int, pos: int, model: str) -> None:
    """Where the rollouts come from (the local model or an inference server), the cost, then the
    button that branches at ``pos``."""
    path, version = state.store().path, state.store().version()
    from analysis.errors import ThinkscopeError
    try:  # a trace without its model's token ids (uploaded text, a server's) branches through a server only
        br.load_parent(state.store(), trace_id)
        no_ids = None
    except ThinkscopeError as e:
        no_ids = str(e)
    backend = st.radio("Rollouts from", ["local", "server"], horizontal=True, key="branches.backend",
                       index=1 if no_ids else 0,
                       format_func={"local": f"the local model ({model or 'the run’s model'})",
                                    "server": "an inference server (OpenAI-compatible completions)"}.get)
    if backend == "local" and no_ids:
        st.info(md(no_ids) + ". Its rollouts can come from an inference server instead (above).")
        return
    if backend == "server":
        s1, s2, s3 = st.columns([2, 1.4, 1.2])
        url = s1.text_input("Server URL", key="branches.server_url", placeholder="http://127.0.0.1:8000")
        served = s2.text_input("Served model (blank: the server's first)", key="branches.server_model")
        raw = s3.toggle("Prompt as is (no chat template)", value=False, key="branches.raw_prompt",
                        help="The prefix is sent as text: the prompt as stored, the completion before t and the "
                             "forced token; a run whose prompt went through a chat template needs the template "
                             "rendered, which this does not do.")
    parent = br.load_parent(state.store(), trace_id, need_ids=backend == "local")
    c = st.columns(5)
    n = c[0].number_input("Rollouts per branch", 1, 64, 2, key="branches.n")
    budget = c[1].number_input("Token budget per rollout", 1, 1024, 32, key="branches.budget")
    p_min = c[2].number_input("p_min", 0.0, 1.0, 0.05, 0.01, key="branches.pmin")
    max_alt = c[3].number_input("Most alternatives", 1, 20, 2, key="branches.maxalt")
    fresh = c[4].toggle("Fresh sample too", value=False, key="branches.fresh")
    adaptive = st.toggle("Adaptive sampling (stop a branch once its outcomes are known within 0.25)", value=False,
                         key="branches.adaptive")
    settings = br.BranchSettings(n=int(n), max_new_tokens=int(budget), p_min=float(p_min),
                                 max_alternatives=int(max_alt), fresh=bool(fresh), adaptive=bool(adaptive))
    if backend == "server":
        from analysis import branch_server as bsv
        k = bsv.branch_counts_server(state.store(), parent, [pos], settings)[0]
        st.caption(f"Cost at t = {pos}: {k} branches × {int(n)} rollouts = {k * int(n)} generations of at most "
                   f"{int(budget) + 1} tokens, through the server (branches from the trace's recorded top-k; "
                   "the prefix is sent as text and tokenised anew by the server).")
    else:
        k = br.branch_counts(parent, [pos], settings)[0]
        st.caption(f"Cost at t = {pos}: {k} branches × {int(n)} rollouts = {k * int(n)} generations, at most "
                   f"{k * int(n) * (int(budget) + 1):,} new tokens, one prefix of {pos} completion tokens encoded "
                   "once (branches from the trace's recorded top-k at the run's temperature).")
    if st.button(f"Branch at t = {pos}", type="primary", key="branches.go"):
        if backend == "server":
            from analysis.server.servers import connect
            if not url.strip():
                st.error("Give the server's URL first.")
                return
            try:  # a server that does not answer, or refuses: its one line, and the page stays
                server = connect(url.strip(), served.strip() or None, endpoint="completions", top_k=settings.top_k)
                prompt = bsv.prompt_text(parent, state.store().run_settings(parent.run_id) or {}, bool(raw))
                with st.spinner(f"Branching at t = {pos} through {md(server.model)} ..."):
                    out = bsv.sweep_server(state.store(), server, parent, [pos], settings, None, prompt)
            except ThinkscopeError as e:
                st.error(md(str(e)))
                return
            source = f" through {md(server.model)} ({md(server.kind)}), {out['requests']} requests"
        else:
            lm = get_model(model)
            rate = measured_rate(path, version, trace_id, model, min(settings.batch_size, k * int(n)))
            prompt_tokens = len(br.build_prompt_ids(lm, parent.prompt, parent.generation))
            st.caption("Estimated at most " + md(br.estimate(parent, [pos], settings, rate, prompt_tokens).describe()))
            with st.spinner(f"Branching at t = {pos} ..."):
                out = br.sweep(state.store(), lm, parent, [pos], settings)
            source = ""
        saved = out["budget"] - out["rollouts"]
        st.session_state["branches.done"] = (f"Branched at t = {pos}{source}: {out['rollouts']} rollouts, "
                                             f"{out['tokens']} new tokens in {out['seconds']:.1f} s"
                                             + (f"; adaptive sampling saved {saved} rollouts" if adaptive else ""))
        st.rerun()


def position_panel(run_id: int, trace_id: int, pos: int, stats: dict | None, tt, unit: str, model: str) -> None:
    if stats is None:
        st.info(f"Position {pos} has not been branched yet.")
    else:
        st.plotly_chart(sankey(stats), width="stretch", key="branches.sankey")
        rows = []
        for b in stats["branches"]:
            dist = ", ".join(f"{c}: {s:.0%}" for c, s in zip(stats["categories"], b["shares"]) if s > 0)
            rows.append({"branch": b["kind"], "token at t": "(sampled)" if b["kind"] == "fresh" else token_text.label_token(b["token"] or ""),
                         "p at t": b["p"], "rollouts": b["n"], "outcomes (share)": dist,
                         "TV to original [95 %]": fmt(b["tv"], *b["tv_interval"]),
                         f"KL smoothed ({unit})": b["kl"] * metrics.unit_scale(unit), "accuracy": b["accuracy"],
                         "Δ accuracy [95 %]": fmt(b["d_accuracy"], *b["d_accuracy_interval"]),
                         "forks": b["forks"]})
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="branches.table")
        st.caption(f"Fork strength at t = {pos}: {fmt(stats['fork'], *stats['interval'])} (probability mass at t of "
                   "alternatives whose outcome distribution is at total variation ≥ ε from the original token's; "
                   "95 % posterior interval, Jeffreys-Dirichlet on each branch's outcomes). KL: Laplace-smoothed "
                   f"answer counts, {unit}. 'no answer' is its own outcome.")
        show_rollouts(trace_id, pos, tt, unit)
    with st.expander("Branch at this position" if stats is None else "Branch this position again", expanded=stats is None):
        branch_form(run_id, trace_id, pos, model)


def show_rollouts(trace_id: int, pos: int, tt, unit: str) -> None:
    links = state.cached(rollouts, int(trace_id))
    links = links[links["pos"] == pos]
    context = html.escape("…" + "".join(tt.tokens[max(0, pos - CONTEXT_TOKENS):pos]))
    for (kind, tok_id), g in links.groupby(["kind", "forced_token_id"], sort=False):
        with st.expander(md(f"{kind} · {token_text.label_token(str(g['forced_token'].iloc[0]))} · {len(g)} rollouts")):
            for r in g.head(SHOW_ROLLOUTS).itertuples():
                tok = state.cached(state.tokens, int(r.trace_id))
                h = state.convert(tok["entropy"].to_numpy(dtype=np.float64, na_value=np.nan), unit)
                vmax = float(np.nanpercentile(h, 99)) if np.isfinite(h).any() else 1.0
                answer = "no answer" if pd.isna(r.answer) else str(r.answer)
                grade = "" if pd.isna(r.correct) else (" ✓" if r.correct else " ✗")
                st.html(f'<div style="font-size:0.8rem;color:#4b5563">rollout {int(r.rollout)} (trace '
                        f'#{int(r.trace_id)}): answer <b>{html.escape(answer)}</b>{grade}</div>'
                        f'<div style="color:#9ca3af;font-size:0.85rem">{context}</div>'
                        + str(token_text.token_spans(tok["token"].fillna("").astype(str).tolist(), h, vmax, unit,
                                                     "full")))


def predicts_panel(run_id: int, trace_id: int, eps: float, level: float, unit: str) -> None:
    st.subheader("Does entropy predict forks?")
    c = st.columns(3)
    scope = c[0].radio("Positions", ["this trace", "the whole run"], horizontal=True, key="branches.scope")
    w = int(c[1].number_input("Window w", 1, 32, 4, key="branches.w"))
    scale = metrics.unit_scale(unit)  # τ is asked in the page's unit, used in nats
    tau = float(c[2].number_input(f"Fixed rule's τ ({unit})", 0.0, round(20.0 * scale, 2), round(1.0 * scale, 2),
                                  0.1, key=f"branches.tau.{unit}")) / scale
    pred = state.cached(predictors, int(run_id), float(eps), w, tau)
    if scope == "this trace":
        pred = pred[pred["trace_id"] == trace_id]
    if len(pred) < 2:
        st.info("Branch at least two positions to compare entropy with fork strength.")
        return
    rep = br.entropy_predicts_forks(pred, level)
    fig = go.Figure(go.Scatter(x=state.convert(pred["window_entropy"], unit), y=pred["fork_strength"], mode="markers",
                               marker=dict(color=np.where(pred["lexicon"], "#dc2626", "#2563eb")),
                               text=[f"trace {a} t={b}" for a, b in zip(pred["trace_id"], pred["pos"])]))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=f"window entropy (next {w}, {unit})",
                      yaxis_title="fork strength", title="red: lexicon token")
    st.plotly_chart(fig, width="stretch", key="branches.scatter")
    corr = pd.DataFrame([{"predictor": q, "Spearman ρ with fork strength [95 % bootstrap]": fmt(v["rho"], *v["interval"]),
                          "positions": v["n"]} for q, v in rep["correlation"].items()])
    st.dataframe(corr, hide_index=True, width="stretch", key="branches.corr")
    rules = pd.DataFrame([{"rule": r, "definition": br.RULES[r], "flagged": m["flagged"],
                           "precision": fmt(m["precision"], *m["precision_interval"]),
                           "recall": fmt(m["recall"], *m["recall_interval"]),
                           "AUROC": fmt(m["auroc"], *m["auroc_interval"])} for r, m in rep["rules"].items()])
    st.dataframe(rules, hide_index=True, width="stretch", key="branches.rules")
    st.caption(f"{rep['n']} swept positions, {rep['real_forks']} real forks (fork strength ≥ {level}). Intervals: "
               "95 % bootstrap over positions. AUROC scores: per-trace percentile rank of window entropy "
               "(percentile rule), window entropy (run top-% and fixed), the lexicon flag (lexicon).")


# ---------------------------------------------------------------- page
st.title("Branches")
if "branches.done" in st.session_state:
    st.success(st.session_state.pop("branches.done"))

runs = state.cached(state.runs)
own = runs.loc[runs["source"] != "branch", "run_id"]  # rollouts' own runs are offered, not chosen first
run_id = state.select_run("branches.run", runs, default=int(own.iloc[-1]) if len(own) else None)
if run_id is None:
    st.stop()
traces = state.cached(state.traces, run_id)
if traces.empty:
    st.info("This run has no traces yet.")
    st.stop()
trace_id = int(state.select_trace(traces, "branches.trace"))
model = runs.loc[runs.run_id == run_id, "model"]
model = "" if model.empty or pd.isna(model.iloc[0]) else str(model.iloc[0])
unit = state.unit()
c = st.columns(2)
eps = float(c[0].slider("ε: an alternative forks at total variation ≥ ε", 0.05, 1.0, 0.3, 0.05, key="branches.eps"))
level = float(c[1].slider("A real fork: fork strength ≥", 0.01, 1.0, 0.1, 0.01, key="branches.level"))

tt = state.cached(trace_text, trace_id)
if not tt.n:
    st.info("This trace has no tokens.")
    st.stop()
h = tt.entropy.get("full", next(iter(tt.entropy.values()), np.full(tt.n, np.nan)))
estimator = "full" if "full" in tt.entropy else next(iter(tt.entropy), "none")
win = metrics.window_entropy(h, 4).values
table, stats = state.cached(positions, trace_id, eps)

asked = st.query_params.get("pos")
if asked is not None and asked.isdigit() and int(asked) < tt.n and st.session_state.get("branches.asked") != asked:
    st.session_state["branches.asked"] = asked  # a clicked token (a link): taken once
    state.seed("branches.pos", int(asked))
elif not 0 <= st.session_state.get("branches.pos", -1) < tt.n:  # first visit, or another trace
    state.seed("branches.pos", int(table["pos"].iloc[0]) if len(table) else 0)
pos = int(st.number_input("Position t (or click a token below)", 0, tt.n - 1, key="branches.pos"))

st.plotly_chart(fork_chart(table, tt.labels, win, unit, estimator, 4, pos), width="stretch", key="branches.curve")
m = st.columns(3)
m[0].metric("Swept positions", f"{len(table)}")
m[1].metric("Rollouts", f"{int(table['rollouts'].sum()) if len(table) else 0}")
m[2].metric("Survival at the last swept position", fmt(table["survival"].iloc[-1]) if len(table) else "n/a",
            help="S_t = Π (1 − hazard_s) over swept positions s ≤ t; hazard = fork strength (Forking Paths).")

vals = state.convert(h, unit)
vmax = float(np.nanpercentile(vals, 99)) if np.isfinite(vals).any() else 1.0
with st.container(border=True):
    st.html(linked_text(tt.tokens, vals, vmax, unit, estimator, tt.alternatives,
                        [int(p) for p in table["pos"]], run_id, trace_id))
st.caption(f"Token entropy ({unit}, {estimator}); outlined: swept positions. Click a token to open its branches.")

st.subheader(md(f"Position t = {pos}: {token_text.label_token(tt.tokens[pos])}"))
position_panel(run_id, trace_id, pos, stats.get(pos), tt, unit, model)

if len(table):
    st.subheader("Survival over swept positions")
    st.plotly_chart(survival_chart(table), width="stretch", key="branches.survival")
predicts_panel(run_id, trace_id, eps, level, unit)
