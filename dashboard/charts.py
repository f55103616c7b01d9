"""Plotly figure builders and HTML renderers: data in, figure or markup out; no streamlit.

Every axis names its quantity, unit and estimator. Token text is untrusted: it is
HTML-escaped wherever it becomes markup (hover text included).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import metrics
from dashboard import tokens as tokens_html
from dashboard.text import chart

PALETTE = ["#6d28d9", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#ca8a04"]
#: the template of the figures the long-trace pages draw with ``theme=None``: Streamlit's own
#: theme restyles every figure in the browser at each draw, which costs most on the largest ones
TEMPLATE = "plotly_white"


def unit_label(quantity: str, unit: str, estimator: str) -> str:
    return f"{quantity} ({unit}, {estimator})"


def token_html(tokens: Sequence[str], values: np.ndarray, vmax: float, unit: str, estimator: str,
               alternatives: Sequence[Sequence[tuple[str, float]]] | None = None,
               marks: set[int] | None = None, boundary: int | None = None, offset: int = 0,
               max_alternatives: int = tokens_html.MAX_ALTERNATIVES) -> tokens_html.Markup:
    """The trace text coloured by entropy (see :func:`dashboard.tokens.token_spans`), with each
    token's alternatives given as (text, logprob) pairs."""
    alt = None
    if alternatives is not None:
        rows = [list(a) for a in alternatives]
        alt = tokens_html.alternatives_text([[t for t, _ in r] for r in rows],
                                            [np.array([lp for _, lp in r], dtype=np.float64) for r in rows],
                                            len(rows), max_alternatives)
        alt = np.concatenate([alt, np.full(max(0, len(tokens) - len(alt)), "", dtype=object)])
    return tokens_html.token_spans(tokens, values, vmax, unit, estimator, alt, boundary, offset,
                                   sorted(marks or ()))


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


def entropy_curve_spec(labels: Sequence[str], token_h: np.ndarray, window_h: np.ndarray, tau: float | None,
                       forks: np.ndarray, unit: str, estimator: str, w: int, boundary: int | None = None,
                       max_points: int = 20000, conditions: str | None = None) -> dict:
    """Single-token and window entropy along a trace, forking points and threshold marked, as a
    plotly figure spec (a dict of plain values and numpy arrays, built without plotly's
    validation, which costs more than the rest of a slider move on a long trace; the explorer
    draws it with ``dashboard.line_chart``, and :func:`entropy_curve` makes it a figure).

    ``labels`` are the tokens as plotly-safe labels (escaped, whitespace visible). One hover
    per position shows the token, its entropy and the window entropy, each with unit and
    estimator, and ``conditions`` (the temperature and truncation the values were taken at,
    ``metrics.conditions_text``) where given. Beyond ``max_points`` the curves are min/max
    downsampled so that peaks survive. The threshold and the boundary are layout shapes.
    """
    n = len(token_h)
    x = np.arange(n)
    hover = np.asarray(labels, dtype=object)
    est = chart(estimator)
    at = f"<br>{chart(conditions)}" if conditions else ""
    xs, ys = downsample_minmax(x, np.asarray(token_h, float), max_points)
    token_trace = dict(type="scatter", x=xs, y=ys, mode="lines", name="token entropy",
                       line=dict(color="#a78bfa", width=1),
                       hovertemplate=f"token %{{customdata}}<br>H = %{{y:.3f}} {unit} ({est}){at}<extra></extra>")
    if n:
        token_trace["customdata"] = hover[xs]
    xw, yw = downsample_minmax(x, np.asarray(window_h, float), max_points)
    data = [token_trace, dict(
        type="scatter", x=xw, y=yw, mode="lines", name=f"window entropy (next {w} tokens)",
        line=dict(color="#4c1d95", width=2.2),
        hovertemplate=f"window H (next {w}) = %{{y:.3f}} {unit} ({est})<extra></extra>")]
    if len(forks):
        data.append(dict(
            type="scatter", x=np.asarray(forks), y=np.asarray(window_h)[forks], mode="markers", name="forking point",
            marker=dict(color="#e11d48", size=8, symbol="diamond", line=dict(color="white", width=1)),
            hoverinfo="skip"))  # a unified hover would show the nearest fork at any position
    shapes, notes = [], []
    if tau is not None and np.isfinite(tau):
        # named in the legend rather than on the line, where the forking points would cover it
        shapes.append(dict(type="line", xref="paper", x0=0, x1=1, y0=tau, y1=tau,
                           line=dict(color="#e11d48", dash="dash", width=1)))
        data.append(dict(type="scatter", x=[None], y=[None], mode="lines", name=f"threshold τ = {tau:.3f} {unit}",
                         line=dict(color="#e11d48", dash="dash", width=1), hoverinfo="skip"))
    if boundary is not None and 0 < boundary < n:
        shapes.append(dict(type="line", yref="paper", y0=0, y1=1, x0=boundary - 0.5, x1=boundary - 0.5,
                           line=dict(color="#15803d", width=2)))
        notes.append(dict(yref="paper", x=boundary - 0.5, y=1, yanchor="bottom", xanchor="left",
                          showarrow=False, text="answer starts", font=dict(color="#15803d", size=11)))
    layout = dict(
        template=TEMPLATE, height=360, margin=dict(l=10, r=10, t=40, b=10), hovermode="x unified", shapes=shapes,
        annotations=notes, legend=dict(orientation="h", yanchor="bottom", y=1.06, x=0),
        xaxis=dict(title=dict(text="token position in completion"), hoverformat="d"),
        yaxis=dict(title=dict(text=unit_label("entropy H", unit, estimator)), rangemode="tozero"))
    return dict(data=data, layout=layout)


def entropy_curve(*args, **kwargs) -> go.Figure:
    """:func:`entropy_curve_spec` as a plotly figure (validated)."""
    return go.Figure(entropy_curve_spec(*args, **kwargs))


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
    fig.update_layout(template=TEMPLATE, height=320, margin=dict(l=10, r=10, t=10, b=10),
                      xaxis_title=unit_label("token entropy", unit, "full"),
                      yaxis_title=f"token entropy ({unit}, top-k estimator)")
    return fig
