"""Plotly builders for the Layers page: logit-lens and attention entropy by layer; no streamlit.

Every axis names its quantity, unit and estimator. Token text (and each layer's top-1
token) is untrusted and HTML-escaped before it reaches a hover label or a tick label.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import PALETTE
from dashboard.text import chart
from dashboard.tokens import label_token, per_unique

#: sequential colour scale for entropy heatmaps (low: pale, high: deep violet)
HEAT_SCALE = [(0.0, "#f8fafc"), (0.2, "#fde68a"), (0.45, "#fb923c"), (0.7, "#e11d48"), (1.0, "#4c1d95")]
LENS_ESTIMATOR = "logit lens: final norm + unembedding, softmax at T=1"
#: group name -> colour for the anchor/explorer split
SPLIT_COLORS = {"anchor": "#0891b2", "middle": "#9ca3af", "explorer": "#e11d48"}


# ticklabeloverflow "allow": plotly's default ("hide past div") measures every tick label once more
# after drawing it, to hide those past the figure's edge; the margins below leave them room
_AXIS = dict(gridcolor="#EBF0F8", linecolor="#EBF0F8", zerolinecolor="#EBF0F8", zerolinewidth=2, ticks="",
             title=dict(standoff=15), automargin=True, ticklabeloverflow="allow")
_COLORBAR = dict(outlinewidth=0, ticks="", ticklabeloverflow="allow")
#: the few properties of ``plotly_white`` these charts show, as a template: the full one is ~7 kB of
#: JSON in every figure, and plotly.py builds it into each figure at ~20 ms a figure
TEMPLATE = dict(
    layout=dict(font=dict(color="#2a3f5f"), paper_bgcolor="white", plot_bgcolor="white", hovermode="closest",
                hoverlabel=dict(align="left"), title=dict(x=0.05), xaxis=_AXIS, yaxis=_AXIS),
    data=dict(heatmap=[dict(colorbar=_COLORBAR)], histogram2d=[dict(colorbar=_COLORBAR)]))


def _esc(text: str, limit: int = 30) -> str:
    """A token as a plotly label: whitespace visible (␣ ↵), cut at ``limit`` characters, escaped."""
    return chart(label_token(text)[:limit])


def layer_heatmap(values: np.ndarray, layers: Sequence[int], tokens: Sequence[str], quantity: str,
                  unit: str, estimator: str, top1: Sequence[Sequence[str]] | None = None,
                  offset: int = 0, zmax: float | None = None, boundary: int | None = None,
                  max_tick_labels: int = 24, y_title: str = "layer") -> go.Figure:
    """Layer x token-position heatmap of ``values`` [T, len(layers)].

    The x axis is the completion token position, its ticks labelled with the tokens (every
    k-th token when more than ``max_tick_labels`` are shown, so that labels never overlap;
    whitespace shown as ␣ ↵), the y axis the 1-based layer (its title ``y_title``); the
    colour scale runs from 0 to ``zmax`` when given, else over the data. Hover shows the token, the
    value and, for the logit lens, that layer's top-1 token (``top1`` [T][len(layers)]).
    """
    v = np.asarray(values, dtype=np.float64)
    n, n_layers = v.shape if v.ndim == 2 else (0, len(layers))
    x = np.arange(offset, offset + n)
    tok = per_unique(_esc, list(tokens[:n]))
    # [layer, position, (position, token, top-1)]; without top-1 tokens the third is left out
    custom = np.empty((n_layers, n, 3 if top1 is not None and n else 2), dtype=object)
    custom[:, :, 0] = x[None, :]
    custom[:, :, 1] = tok[None, :]
    extra = ""
    if top1 is not None and n:
        rows = np.empty((n, n_layers), dtype=object)
        rows[:] = [list(r) for r in top1[:n]]
        custom[:, :, 2] = per_unique(_esc, rows).T
        extra = "<br>top-1 at this layer: %{customdata[2]}"
    scale = dict(zmin=0, zmax=zmax) if zmax is not None else {}
    step = max(1, -(-n // max_tick_labels))
    xaxis = dict(title="completion token position (ticks: the token" + (f" every {step} positions)" if step > 1
                                                                        else "s)"))
    if n:
        ticks = np.arange(0, n, step)
        xaxis.update(tickmode="array", tickvals=x[ticks], ticktext=[_esc(tokens[i], 10) for i in ticks],
                     tickangle=-50, tickfont=dict(size=11), automargin=True)
    yaxis = dict(title=y_title, automargin=True)
    # the cells cover the plot: grid and zero lines under them would only cost DOM nodes
    for axis in (xaxis, yaxis):
        axis.update(showgrid=False, zeroline=False)
    if len(layers) <= 40:
        # every layer's number when they fit (12 px per row), else every second one
        every = 1 if len(layers) <= 20 else 2
        yaxis.update(tickmode="array", tickvals=list(layers)[::every], tickfont=dict(size=11))
    # margins that already hold the rotated tick labels (10 characters at most), the axis titles and the
    # colour bar (anchored at the plot's right edge), so plotly's automargin has nothing to push and
    # the figure is drawn once, not twice; a longer label still pushes them, at the cost of a redraw
    layout = dict(template=TEMPLATE, height=max(300, 130 + 16 * n_layers), margin=dict(l=52, r=140, t=36, b=90),
                  xaxis=xaxis, yaxis=yaxis,
                  title=dict(text=f"{chart(quantity)} ({chart(unit)}, {chart(estimator)})", font=dict(size=13)))
    if boundary is not None and offset < boundary < offset + n:
        layout["shapes"] = [dict(type="line", yref="paper", y0=0, y1=1, x0=boundary - 0.5, x1=boundary - 0.5,
                                 line=dict(color="#15803d", width=2))]
        layout["annotations"] = [dict(yref="paper", x=boundary - 0.5, y=1, yanchor="bottom", xanchor="left",
                                      showarrow=False, text="answer starts", font=dict(color="#15803d", size=11))]
    # one constructor call: plotly validates once instead of at every update_layout
    heat = go.Heatmap(
        z=v.T, x=x, y=list(layers), customdata=custom, colorscale=HEAT_SCALE, hoverongaps=False, **scale,
        colorbar=dict(title=dict(text=f"{chart(quantity)}<br>({chart(unit)})", side="right"), x=1.0),
        hovertemplate=(f"layer %{{y}} · position %{{customdata[0]}}<br>token %{{customdata[1]}}<br>"
                       f"{chart(quantity)} = %{{z:.3f}} {chart(unit)} ({chart(estimator)}){extra}<extra></extra>"))
    fig = go.Figure(data=[heat], layout=layout)
    return fig


def layer_profile(df: pd.DataFrame, quantity: str, unit: str, estimator: str,
                  reference: dict[str, float] | None = None) -> go.Figure:
    """Entropy profiles over layers, one line per group, with a band for the interval.

    ``df`` columns: group, layer, mean, and optionally lo/hi (the band) and n. ``reference``
    draws horizontal lines (e.g. the trace's mean token entropy). Every quantity drawn here is
    an entropy or a ratio of entropies, never negative, so the band is clipped at 0.
    """
    data, shapes, notes = [], [], []
    for i, (group, g) in enumerate(df.groupby("group", sort=False)):
        g = g.sort_values("layer")
        color = PALETTE[i % len(PALETTE)]
        label = chart(str(group))
        if {"lo", "hi"} <= set(g.columns) and g["lo"].notna().any():
            data.append(go.Scatter(
                x=np.concatenate([g["layer"], g["layer"][::-1]]),
                y=np.concatenate([g["hi"], np.maximum(g["lo"].to_numpy(dtype=np.float64), 0.0)[::-1]]),
                fill="toself", fillcolor=color,
                opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label))
        ncol = g["n"].to_numpy() if "n" in g else np.full(len(g), np.nan)
        data.append(go.Scatter(
            x=g["layer"], y=g["mean"], mode="lines+markers", name=label, legendgroup=label,
            line=dict(color=color, width=2), marker=dict(size=5), customdata=ncol,
            hovertemplate=f"{label}<br>layer %{{x}}<br>{chart(quantity)} = %{{y:.3f}} {chart(unit)} "
                          f"({chart(estimator)})<br>n = %{{customdata}}<extra></extra>"))
    for name, value in (reference or {}).items():
        if value is not None and np.isfinite(value):
            shapes.append(dict(type="line", xref="paper", x0=0, x1=1, y0=value, y1=value,
                               line=dict(color="#6b7280", dash="dot", width=1)))
            notes.append(dict(xref="paper", x=0, y=value, xanchor="left", yanchor="bottom", showarrow=False,
                              text=chart(name), font=dict(size=11, color="#374151"),
                              bgcolor="rgba(255,255,255,0.85)"))
    # margins holding the tick labels, axis titles and (above the plot, for more than one trace) a one-row
    # legend: nothing left for automargin to push, so no second draw
    top = 48 if len(data) > 1 else 30
    return go.Figure(data=data, layout=dict(
        template=TEMPLATE, height=340, margin=dict(l=58, r=10, t=top, b=56), hovermode="closest", shapes=shapes,
        annotations=notes,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
        xaxis=dict(title="layer (1-based; residual stream after the block)"),
        yaxis=dict(title=f"{quantity} ({unit}, {estimator})", rangemode="tozero")))


def head_heatmap(values: np.ndarray, tokens: Sequence[str], layer: int, unit: str, offset: int = 0,
                 zmax: float | None = None) -> go.Figure:
    """Per-head attention entropy [T, H] of one layer, heads on the y axis."""
    return layer_heatmap(values, list(range(1, values.shape[1] + 1)), tokens,
                         f"attention entropy, layer {layer}", unit, "per head", offset=offset, zmax=zmax,
                         y_title="head")


def anchors_explorers_density(attn: np.ndarray, token_h: np.ndarray, groups: np.ndarray, attn_label: str,
                              unit: str, token_estimator: str) -> go.Figure:
    """Each token's attention entropy against its token entropy, as a density (tokens per cell),
    with the anchor and explorer bands shaded in their colours.

    A density rather than one marker per token: thousands of SVG markers cost a browser without
    a GPU more than the rest of the page, and the groups are bands of the x axis anyway (they
    are cut by attention entropy); the tables under the chart list the tokens themselves.
    """
    a = np.asarray(attn, dtype=np.float64)
    h = np.asarray(token_h, dtype=np.float64)
    g = np.asarray(groups)
    ok = np.isfinite(a) & np.isfinite(h)
    data = [go.Histogram2d(
        x=a[ok], y=h[ok], nbinsx=40, nbinsy=30,
        colorscale=[(0.0, "rgba(255,255,255,0)"), (0.02, "#ede9fe"), (1.0, "#4c1d95")],  # empty cells clear
        colorbar=dict(title=dict(text="tokens", side="right"), x=1.0), zmin=0,
        hovertemplate=(f"{chart(attn_label)} %{{x}}<br>token entropy H %{{y}} {chart(unit)} "
                       f"({chart(token_estimator)})<br>%{{z}} tokens<extra></extra>"))]
    shapes, notes = [], []
    for name, side in (("anchor", "max"), ("explorer", "min")):
        sel = ok & (g == name)
        if not sel.any():
            continue
        edge = float(a[sel].max() if side == "max" else a[sel].min())
        x0, x1 = (float(a[ok].min()), edge) if side == "max" else (edge, float(a[ok].max()))
        color = SPLIT_COLORS[name]
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=x0, x1=x1, y0=0, y1=1, fillcolor=color,
                           opacity=0.1, line=dict(width=0), layer="above"))
        shapes.append(dict(type="line", xref="x", yref="paper", x0=edge, x1=edge, y0=0, y1=1,
                           line=dict(color=color, dash="dash", width=1.5)))
        notes.append(dict(xref="x", yref="paper", x=edge, y=1, yanchor="bottom",
                          xanchor="right" if side == "max" else "left", showarrow=False,
                          text=f"{name}s: {int(sel.sum())} tokens", font=dict(color=color, size=11)))
    return go.Figure(data=data, layout=dict(
        # margins holding the tick labels, axis titles and colour bar: no automargin redraw
        template=TEMPLATE, height=340, margin=dict(l=58, r=110, t=30, b=56), shapes=shapes, annotations=notes,
        plot_bgcolor="rgba(0,0,0,0)",
        xaxis=dict(title=chart(attn_label)), yaxis=dict(title=f"token entropy H ({unit}, {token_estimator})")))
