"""Plotly builders for the Layers page: logit-lens and attention entropy by layer; no streamlit.

Every axis names its quantity, unit and estimator. Token text (and each layer's top-1
token) is untrusted and HTML-escaped before it reaches a hover label or a tick label.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import PALETTE, visible_token
from dashboard.text import chart

#: sequential colour scale for entropy heatmaps (low: pale, high: deep violet)
HEAT_SCALE = [(0.0, "#f8fafc"), (0.2, "#fde68a"), (0.45, "#fb923c"), (0.7, "#e11d48"), (1.0, "#4c1d95")]
LENS_ESTIMATOR = "logit lens: final norm + unembedding, softmax at T=1"
#: group name -> colour for the anchor/explorer split
SPLIT_COLORS = {"anchor": "#0891b2", "middle": "#9ca3af", "explorer": "#e11d48"}


def _esc(text: str, limit: int = 30) -> str:
    return chart(visible_token(str(text))[:limit])


def layer_heatmap(values: np.ndarray, layers: Sequence[int], tokens: Sequence[str], quantity: str,
                  unit: str, estimator: str, top1: Sequence[Sequence[str]] | None = None,
                  offset: int = 0, zmax: float | None = None, boundary: int | None = None,
                  max_tick_labels: int = 120, y_title: str = "layer") -> go.Figure:
    """Layer x token-position heatmap of ``values`` [T, len(layers)].

    The x axis is the completion token position (tick labels are the tokens themselves
    when few enough are shown), the y axis the 1-based layer (its title ``y_title``); the
    colour scale runs from 0 to ``zmax`` when given, else over the data. Hover shows the token, the
    value and, for the logit lens, that layer's top-1 token (``top1`` [T][len(layers)]).
    """
    v = np.asarray(values, dtype=np.float64)
    n, n_layers = v.shape if v.ndim == 2 else (0, len(layers))
    x = np.arange(offset, offset + n)
    tok = np.array([_esc(t) for t in tokens[:n]], dtype=object)
    custom = np.empty((n_layers, n, 3), dtype=object)
    custom[:, :, 0] = x[None, :]
    custom[:, :, 1] = tok[None, :]
    custom[:, :, 2] = ""
    extra = ""
    if top1 is not None and n:
        custom[:, :, 2] = np.array([[_esc(t) for t in row] for row in top1[:n]], dtype=object).T
        extra = "<br>top-1 at this layer: %{customdata[2]}"
    scale = dict(zmin=0, zmax=zmax) if zmax is not None else {}
    fig = go.Figure(go.Heatmap(
        z=v.T, x=x, y=list(layers), customdata=custom, colorscale=HEAT_SCALE, hoverongaps=False, **scale,
        colorbar=dict(title=dict(text=f"{chart(quantity)}<br>({chart(unit)})", side="right")),
        hovertemplate=(f"layer %{{y}} · position %{{customdata[0]}}<br>token %{{customdata[1]}}<br>"
                       f"{chart(quantity)} = %{{z:.3f}} {chart(unit)}{extra}<extra></extra>")))
    if boundary is not None and offset < boundary < offset + n:
        fig.add_vline(x=boundary - 0.5, line=dict(color="#16a34a", width=2),
                      annotation_text="answer starts", annotation_position="top right")
    xaxis = dict(title="completion token position (tick labels: the tokens)" if 0 < n <= max_tick_labels
                 else "completion token position")
    if 0 < n <= max_tick_labels:
        xaxis.update(tickmode="array", tickvals=x, ticktext=list(tok), tickangle=-60, tickfont=dict(size=9))
    yaxis = dict(title=y_title)
    if len(layers) <= 40:
        yaxis.update(tickmode="array", tickvals=list(layers))
    fig.update_layout(height=max(260, 80 + 16 * n_layers), margin=dict(l=10, r=10, t=30, b=10),
                      xaxis=xaxis, yaxis=yaxis,
                      title=dict(text=f"{chart(quantity)} ({chart(unit)}, {chart(estimator)})",
                                 font=dict(size=13)))
    return fig


def layer_profile(df: pd.DataFrame, quantity: str, unit: str, estimator: str,
                  reference: dict[str, float] | None = None) -> go.Figure:
    """Entropy profiles over layers, one line per group, with a band for the interval.

    ``df`` columns: group, layer, mean, and optionally lo/hi (the band) and n. ``reference``
    draws horizontal lines (e.g. the trace's mean token entropy).
    """
    fig = go.Figure()
    for i, (group, g) in enumerate(df.groupby("group", sort=False)):
        g = g.sort_values("layer")
        color = PALETTE[i % len(PALETTE)]
        label = chart(str(group))
        if {"lo", "hi"} <= set(g.columns) and g["lo"].notna().any():
            fig.add_trace(go.Scatter(
                x=np.concatenate([g["layer"], g["layer"][::-1]]),
                y=np.concatenate([g["hi"], g["lo"][::-1]]), fill="toself", fillcolor=color,
                opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label))
        ncol = g["n"].to_numpy() if "n" in g else np.full(len(g), np.nan)
        fig.add_trace(go.Scatter(
            x=g["layer"], y=g["mean"], mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=color, width=2), marker=dict(size=5), customdata=ncol,
            hovertemplate=f"{label}<br>layer %{{x}}<br>mean = %{{y:.3f}} {chart(unit)}"
                          "<br>n = %{customdata}<extra></extra>"))
    for j, (name, value) in enumerate((reference or {}).items()):
        if value is not None and np.isfinite(value):
            fig.add_hline(y=value, line=dict(color="#6b7280", dash="dot", width=1),
                          annotation_text=chart(name), annotation_position="top left")
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10), hovermode="closest",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      xaxis_title="layer (1-based; residual stream after the block)",
                      yaxis_title=f"{quantity} ({unit}, {estimator})")
    return fig


def head_heatmap(values: np.ndarray, tokens: Sequence[str], layer: int, unit: str, offset: int = 0,
                 zmax: float | None = None) -> go.Figure:
    """Per-head attention entropy [T, H] of one layer, heads on the y axis."""
    return layer_heatmap(values, list(range(1, values.shape[1] + 1)), tokens,
                         f"attention entropy, layer {layer}", unit, "per head", offset=offset, zmax=zmax,
                         y_title="head")


def anchors_explorers_scatter(attn: np.ndarray, token_h: np.ndarray, groups: np.ndarray,
                              tokens: Sequence[str], attn_label: str, unit: str, token_estimator: str
                              ) -> go.Figure:
    """Each token's attention entropy against its token entropy, coloured anchor/middle/explorer."""
    fig = go.Figure()
    tok = np.array([_esc(t) for t in tokens], dtype=object)
    pos = np.arange(len(tokens))
    for name, color in SPLIT_COLORS.items():
        sel = np.asarray(groups) == name
        if not sel.any():
            continue
        fig.add_trace(go.Scattergl(
            x=np.asarray(attn)[sel], y=np.asarray(token_h)[sel], mode="markers", name=name,
            marker=dict(color=color, size=6, opacity=0.75), customdata=np.stack([pos[sel], tok[sel]], axis=1),
            hovertemplate=("position %{customdata[0]} · token %{customdata[1]}<br>attention %{x:.3f}"
                           f"<br>token entropy %{{y:.3f}} {chart(unit)}<extra>{name}</extra>")))
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
                      xaxis_title=chart(attn_label),
                      yaxis_title=f"token entropy ({unit}, {token_estimator})")
    return fig
