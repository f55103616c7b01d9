"""Plotly figure builders and HTML renderers: data in, figure or markup out; no streamlit.

Every axis names its quantity, unit and estimator. Token text is untrusted: it is
HTML-escaped wherever it becomes markup (hover text included).
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import metrics
from dashboard.text import chart

#: entropy colour scale for token backgrounds: low = white-ish, high = deep violet/red
COLORSCALE = [(0.0, "#f8fafc"), (0.25, "#fde68a"), (0.5, "#fb923c"), (0.75, "#e11d48"), (1.0, "#7e22ce")]
PALETTE = ["#6d28d9", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#ca8a04"]


def unit_label(quantity: str, unit: str, estimator: str) -> str:
    return f"{quantity} ({unit}, {estimator})"


def _interp_color(x: float) -> str:
    """Colour for x in [0, 1] on COLORSCALE, as a hex string."""
    x = float(np.clip(x, 0.0, 1.0))
    for (x0, c0), (x1, c1) in zip(COLORSCALE, COLORSCALE[1:]):
        if x <= x1:
            f = 0.0 if x1 == x0 else (x - x0) / (x1 - x0)
            a = [int(c0[i : i + 2], 16) for i in (1, 3, 5)]
            b = [int(c1[i : i + 2], 16) for i in (1, 3, 5)]
            return "#" + "".join(f"{round(u + (v - u) * f):02x}" for u, v in zip(a, b))
    return COLORSCALE[-1][1]


def visible_token(text: str) -> str:
    """Token text with whitespace made visible enough to hover over."""
    if text == "":
        return "\u200b"
    return text


def token_html(tokens: Sequence[str], values: np.ndarray, vmax: float, unit: str, estimator: str,
               alternatives: Sequence[Sequence[tuple[str, float]]] | None = None,
               marks: set[int] | None = None, boundary: int | None = None, offset: int = 0,
               max_alternatives: int = 10) -> str:
    """The trace text as one HTML block, each token's background coloured by entropy.

    Hovering a token shows its position, entropy and top alternatives with probabilities
    (a native tooltip: light enough for thousands of tokens). Token text is escaped.
    """
    marks = marks or set()
    parts = ['<div class="ts-text" style="font-family: ui-monospace, monospace; font-size: 0.9rem; '
             'line-height: 1.9; white-space: pre-wrap; word-break: break-word;">']
    scale = vmax if vmax and np.isfinite(vmax) and vmax > 0 else 1.0
    for i, (tok, v) in enumerate(zip(tokens, values)):
        pos = offset + i
        if boundary is not None and pos == boundary:
            parts.append('<span class="ts-boundary" style="border-left: 3px solid #16a34a; '
                         'margin: 0 2px; padding-left: 2px; color: #16a34a; font-size: 0.7rem;">answer ▸</span>')
        finite = v is not None and np.isfinite(v)
        color = _interp_color(v / scale) if finite else "#e5e7eb"
        tip = [f"#{pos}  {unit_label('entropy', unit, estimator)}: " + (f"{v:.3f}" if finite else "n/a")]
        if alternatives is not None and i < len(alternatives):
            for alt, lp in list(alternatives[i])[:max_alternatives]:
                tip.append(f"{np.exp(lp) * 100:6.2f}%  {alt!r}")
        style = f"background:{color};"
        if pos in marks:
            style += "outline: 2px solid #111827; outline-offset: -1px;"
        parts.append(f'<span class="tok" data-pos="{pos}" title="{html.escape(chr(10).join(tip), quote=True)}" '
                     f'style="{style} border-radius: 2px;">{html.escape(visible_token(tok))}</span>')
    parts.append("</div>")
    return "".join(parts)


def colorbar_html(vmax: float, unit: str, estimator: str) -> str:
    """A small legend for the token colours."""
    stops = ", ".join(f"{c} {int(x * 100)}%" for x, c in COLORSCALE)
    return (f'<div style="display:flex; align-items:center; gap:8px; font-size:0.8rem;">'
            f'<span>0</span><span style="display:inline-block; width:220px; height:12px; '
            f'background: linear-gradient(to right, {stops}); border-radius: 3px;"></span>'
            f'<span>{vmax:.2f}+ {html.escape(unit)}</span>'
            f'<span style="color:#6b7280;">token entropy, estimator {html.escape(estimator)}; '
            f'outlined tokens are forking points</span></div>')


def downsample_minmax(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the min and max of each bucket so that peaks survive (for very long traces)."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    keep = []
    yy = np.nan_to_num(y, nan=-np.inf)
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        seg = yy[a:b]
        keep.extend(sorted({a + int(np.argmin(np.where(np.isinf(seg), np.inf, seg))), a + int(np.argmax(seg))}))
    keep = np.asarray(sorted(set(keep)))
    return x[keep], y[keep]


def entropy_curve(tokens: Sequence[str], token_h: np.ndarray, window_h: np.ndarray, tau: float | None,
                  forks: np.ndarray, unit: str, estimator: str, w: int, boundary: int | None = None,
                  max_points: int = 20000) -> go.Figure:
    """Single-token and window entropy along a trace, forking points and threshold marked.

    WebGL traces (Scattergl) keep an 8,000-token trace smooth; beyond ``max_points`` the
    curves are min/max downsampled so that peaks survive.
    """
    n = len(token_h)
    x = np.arange(n)
    fig = go.Figure()
    hover = np.array([chart(repr(t)[1:-1][:40]) for t in tokens], dtype=object)
    xs, ys = downsample_minmax(x, np.asarray(token_h, float), max_points)
    fig.add_trace(go.Scattergl(
        x=xs, y=ys, mode="lines", name="token entropy", line=dict(color="#c4b5fd", width=1),
        customdata=hover[xs] if n else None,
        hovertemplate="pos %{x}<br>token %{customdata}<br>H = %{y:.3f}<extra>token</extra>"))
    xw, yw = downsample_minmax(x, np.asarray(window_h, float), max_points)
    fig.add_trace(go.Scattergl(
        x=xw, y=yw, mode="lines", name=f"window entropy (next {w} tokens)",
        line=dict(color="#6d28d9", width=2.2), customdata=hover[xw] if n else None,
        hovertemplate="pos %{x}<br>token %{customdata}<br>window H = %{y:.3f}<extra>window</extra>"))
    if len(forks):
        fig.add_trace(go.Scattergl(
            x=forks, y=np.asarray(window_h)[forks], mode="markers", name="forking point",
            marker=dict(color="#e11d48", size=8, symbol="diamond", line=dict(color="white", width=1)),
            customdata=hover[forks],
            hovertemplate="forking point at %{x}<br>token %{customdata}<br>window H = %{y:.3f}<extra></extra>"))
    if tau is not None and np.isfinite(tau):
        fig.add_hline(y=tau, line=dict(color="#e11d48", dash="dash", width=1),
                      annotation_text=f"τ = {tau:.3f} {unit}", annotation_position="top left")
    if boundary is not None and 0 < boundary < n:
        fig.add_vline(x=boundary - 0.5, line=dict(color="#16a34a", width=2),
                      annotation_text="answer starts", annotation_position="top right")
    fig.update_layout(
        height=340, margin=dict(l=10, r=10, t=30, b=10), hovermode="closest",
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
        xaxis_title="token position in completion",
        yaxis_title=unit_label("entropy", unit, estimator))
    return fig


def run_entropy_box(stats: pd.DataFrame, unit: str) -> go.Figure:
    """Distribution of per-trace sequence entropy for each run (best estimator per run)."""
    fig = go.Figure()
    for i, (label, g) in enumerate(stats.groupby("label", sort=False)):
        est = ", ".join(sorted(g["estimator"].unique()))
        fig.add_trace(go.Box(y=g["value"], name=chart(label), boxpoints="all", jitter=0.4,
                             pointpos=0, marker=dict(color=PALETTE[i % len(PALETTE)], size=4),
                             hovertemplate=f"%{{y:.3f}} {unit} ({chart(est)})<extra></extra>"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), showlegend=False,
                      yaxis_title=f"sequence entropy ({unit}, best estimator)")
    return fig


def estimator_comparison(df: pd.DataFrame, unit: str) -> go.Figure:
    """Each top-k estimator against the full entropy, token by token (how much top-k misses)."""
    fig = go.Figure()
    lim = float(np.nanmax(df["full"])) if len(df) else 1.0
    for i, est in enumerate(metrics.TOPK_ESTIMATORS):
        if est in df:
            fig.add_trace(go.Scattergl(x=df["full"], y=df[est], mode="markers", name=est,
                                       marker=dict(size=4, color=PALETTE[i], opacity=0.6)))
    fig.add_trace(go.Scatter(x=[0, lim], y=[0, lim], mode="lines", name="y = x",
                             line=dict(color="#9ca3af", dash="dot")))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10),
                      xaxis_title=unit_label("token entropy", unit, "full"),
                      yaxis_title=f"token entropy ({unit}, top-k estimator)")
    return fig
