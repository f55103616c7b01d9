"""Plotly builders for the U-shape and early-stop pages: DataFrame in, go.Figure out.

No streamlit here. Every axis names its quantity, unit and estimator; values arrive in nats
and are converted with ``scale`` (1 for nats, 1/ln 2 for bits). Names that come from user
data (run names) are HTML-escaped, since plotly renders a subset of HTML in labels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analysis import metrics
from dashboard.text import chart

PALETTE = ["#6d28d9", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#ca8a04"]
SPLIT_COLORS = {"calibration": "#6d28d9", "held-out": "#ea580c", "all": "#0891b2"}


def _scale(unit: str) -> float:
    return metrics.unit_scale(unit)


def axis_label(quantity: str, unit: str, estimator: str) -> str:
    return f"{quantity} ({unit}, {estimator})"


def u_shape_figure(summary: pd.DataFrame, run_labels: Mapping[int, str], unit: str, estimator: str,
                   phase: str, axis_title: str = "difficulty") -> go.Figure:
    """Per-bin mean sequence entropy with its 95% interval (top), accuracy (middle) and mean
    length (bottom), one colour per run. ``summary`` is ``difficulty.bin_summary``."""
    sc = _scale(unit)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06, row_heights=[0.5, 0.25, 0.25])
    for n, (run_id, d) in enumerate(summary.groupby("run_id", sort=False)):
        d = d.sort_values("bin_order")
        color = PALETTE[n % len(PALETTE)]
        name = chart(run_labels.get(run_id, f"run {run_id}"))
        y = d["mean_entropy"].to_numpy() * sc
        up = d["ci_high"].to_numpy() * sc - y
        down = y - d["ci_low"].to_numpy() * sc
        x = d["bin"].astype(str).tolist()
        custom = np.stack([d["count"], d["ci_low"] * sc, d["ci_high"] * sc], axis=1)
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=name, legendgroup=name, line=dict(color=color),
            error_y=dict(type="data", array=np.nan_to_num(up), arrayminus=np.nan_to_num(down), visible=True),
            customdata=custom,
            hovertemplate=("%{x}<br>mean %{y:.3f} " + unit + "<br>95% CI %{customdata[1]:.3f} .. "
                           "%{customdata[2]:.3f}<br>n = %{customdata[0]}<extra>" + name + "</extra>")),
            row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=d["accuracy"] * 100, mode="lines+markers", name=name, legendgroup=name,
                                 showlegend=False, line=dict(color=color, dash="dot"),
                                 hovertemplate="%{x}<br>accuracy %{y:.1f}%<extra>" + name + "</extra>"),
                      row=2, col=1)
        fig.add_trace(go.Bar(x=x, y=d["mean_tokens"], name=name, legendgroup=name, showlegend=False,
                             marker_color=color, opacity=0.6,
                             hovertemplate="%{x}<br>mean length %{y:.0f} tokens<extra>" + name + "</extra>"),
                      row=3, col=1)
    fig.update_yaxes(title_text=axis_label(f"mean H [{phase}]", unit, estimator), row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", range=[-5, 105], row=2, col=1)
    fig.update_yaxes(title_text="length (tokens)", row=3, col=1)
    fig.update_xaxes(title_text=axis_title, row=3, col=1)
    # the title at the top of the figure, the legend under it, above the plot: room for both
    fig.update_layout(height=680, barmode="group", margin=dict(l=70, r=20, t=110, b=50),
                      title=dict(text=f"Mean sequence entropy per bin with 95% t-interval ({phase} tokens), "
                                      "accuracy over graded traces, mean length", font=dict(size=14),
                                 y=1, yref="container", yanchor="top", pad=dict(t=12)),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom"))
    return fig


def tradeoff_figure(curves: Mapping[str, pd.DataFrame], points: Mapping[str, dict], unit: str,
                    estimator: str) -> go.Figure:
    """Accuracy against tokens saved for every threshold, one curve per split, with the
    chosen threshold's point marked. ``curves`` come from ``StopModel.curve``."""
    sc = _scale(unit)
    fig = go.Figure()
    for split, c in curves.items():
        color = SPLIT_COLORS.get(split, PALETTE[0])
        fig.add_trace(go.Scatter(
            x=c["tokens_saved_pct"], y=c["accuracy"] * 100, mode="lines", name=f"{split}",
            line=dict(color=color, shape="hv"), customdata=c["tau"] * sc,
            hovertemplate=("τ = %{customdata:.3f} " + unit + "<br>tokens saved %{x:.1f}%"
                           "<br>accuracy %{y:.1f}%<extra>" + split + "</extra>")))
        p = points.get(split)
        if p:
            fig.add_trace(go.Scatter(
                x=[p["tokens_saved_pct"]], y=[p["accuracy"] * 100], mode="markers", name=f"{split} at τ",
                marker=dict(color=color, size=13, symbol="diamond", line=dict(color="black", width=1)),
                hovertemplate=(f"chosen τ = {p['tau'] * sc:.3f} {unit}<br>tokens saved %{{x:.1f}}%"
                               "<br>accuracy %{y:.1f}%<extra></extra>")))
            fig.add_hline(y=p["baseline_accuracy"] * 100, line=dict(color=color, dash="dot", width=1))
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=40, b=50),
                      title=dict(text="Savings vs accuracy, every τ (dotted: no early stop)", font=dict(size=14)),
                      xaxis_title="tokens saved (% of all tokens in the split)",
                      yaxis_title="accuracy (% of graded traces)", legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


def _by_value(marks: Mapping[str, float]) -> list[tuple[str, float]]:
    """The finite thresholds by value: the lower one's label goes left of its line, the higher
    one's right, so that two close thresholds (tau_mean, tau_info) never overlap."""
    return sorted(((k, v) for k, v in marks.items() if v is not None and np.isfinite(v)), key=lambda kv: kv[1])


def threshold_figure(curves: Mapping[str, pd.DataFrame], tau: float, marks: Mapping[str, float], unit: str,
                     estimator: str) -> go.Figure:
    """Tokens saved and accuracy kept as functions of tau, with the chosen tau and the
    calibrated thresholds (tau_mean, tau_info) as vertical lines."""
    sc = _scale(unit)
    fig = go.Figure()
    for split, c in curves.items():
        color = SPLIT_COLORS.get(split, PALETTE[0])
        x = c["tau"] * sc
        fig.add_trace(go.Scatter(x=x, y=c["tokens_saved_pct"], mode="lines", name=f"tokens saved · {split}",
                                 line=dict(color=color, shape="hv")))
        fig.add_trace(go.Scatter(x=x, y=c["accuracy_kept_pct"], mode="lines", name=f"accuracy kept · {split}",
                                 line=dict(color=color, dash="dash", shape="hv")))
    fig.add_vline(x=tau * sc, line=dict(color="black", width=2),
                  annotation_text=f"τ = {tau * sc:.3f}", annotation_position="top")
    for i, (name, v) in enumerate(_by_value(marks)):
        fig.add_vline(x=v * sc, line=dict(color="#64748b", dash="dot"),
                      annotation_text=chart(name), annotation_position=f"bottom {('left', 'right')[i % 2]}")
    # two title lines at the top of the figure, above the τ label: the chart sits in a column
    fig.update_layout(height=420, margin=dict(l=60, r=20, t=90, b=50),
                      xaxis_title=axis_label("threshold τ", unit, estimator),
                      title=dict(text="Tokens saved and accuracy kept<br>(accuracy / no-stop accuracy) by τ",
                                 font=dict(size=14), y=1, yref="container", yanchor="top", pad=dict(t=10)),
                      yaxis_title="% of tokens / of accuracy",
                      legend=dict(orientation="h", y=-0.3, yanchor="top"))
    return fig


def calibration_figure(entropy: np.ndarray, correct: np.ndarray, marks: Mapping[str, float], unit: str,
                       estimator: str, signal: str) -> go.Figure:
    """Histogram of the calibration traces' signal, correct vs incorrect, with thresholds."""
    sc = _scale(unit)
    h = np.asarray(entropy, float) * sc
    c = np.asarray(correct, bool)
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=h[c], name="correct", marker_color="#16a34a", opacity=0.6, nbinsx=30))
    fig.add_trace(go.Histogram(x=h[~c], name="incorrect", marker_color="#dc2626", opacity=0.6, nbinsx=30))
    for i, (name, v) in enumerate(_by_value(marks)):
        fig.add_vline(x=v * sc, line=dict(color="black", dash="dot"), annotation_text=chart(name),
                      annotation_position=f"top {('left', 'right')[i % 2]}")
    fig.update_layout(barmode="overlay", height=300, margin=dict(l=60, r=20, t=30, b=50),
                      xaxis_title=axis_label(signal, unit, estimator), yaxis_title="calibration traces")
    return fig


def stop_positions_figure(curves: Sequence[dict], tau: float, unit: str, estimator: str, k: int,
                          min_tokens: int) -> go.Figure:
    """Entropy along a few traces (faint), their running mean over k tokens (bold), and the
    stop position of each as a marker. ``curves``: dicts with label, h, running, stop."""
    sc = _scale(unit)
    fig = go.Figure()
    for n, c in enumerate(curves):
        color = PALETTE[n % len(PALETTE)]
        name = chart(c["label"])
        x = np.arange(len(c["h"]))
        fig.add_trace(go.Scatter(x=x, y=np.asarray(c["h"]) * sc, mode="lines", line=dict(color=color, width=1),
                                 opacity=0.3, name=name, legendgroup=name, showlegend=False,
                                 hovertemplate="token %{x}<br>H %{y:.3f} " + unit + "<extra>" + name + "</extra>"))
        fig.add_trace(go.Scatter(x=x, y=np.asarray(c["running"]) * sc, mode="lines", line=dict(color=color, width=2),
                                 name=name, legendgroup=name,
                                 hovertemplate="token %{x}<br>running mean %{y:.3f} " + unit
                                               + "<extra>" + name + "</extra>"))
        s = int(c["stop"])
        if s >= 0:
            fig.add_trace(go.Scatter(x=[s], y=[np.asarray(c["running"])[s] * sc], mode="markers",
                                     marker=dict(color=color, size=14, symbol="x", line=dict(width=2)),
                                     name=f"stop · {name}", legendgroup=name, showlegend=False,
                                     hovertemplate=f"stop after token {s} ({s + 1} tokens kept)<extra></extra>"))
    fig.add_hline(y=tau * sc, line=dict(color="black", dash="dash"), annotation_text=f"τ = {tau * sc:.3f}")
    if min_tokens > 0:
        fig.add_vline(x=min_tokens - 1, line=dict(color="#64748b", dash="dot"), annotation_text="min tokens")
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=30, b=50),
                      xaxis_title="token position",
                      title=dict(text=f"Token entropy (faint), running mean over the last {k} (bold), "
                                      "stop (×)", font=dict(size=14)),
                      yaxis_title=axis_label("entropy", unit, estimator),
                      legend=dict(orientation="h", y=-0.25))
    return fig
