"""Figures of the Signals and Compare pages: data in, plotly figure out; no streamlit.

Every axis names its quantity, unit and estimator; run names and token texts are untrusted
and go through ``chart`` (escaped once).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import PALETTE
from dashboard.text import chart

_LAYOUT = dict(margin=dict(l=60, r=20, t=60, b=50), legend=dict(orientation="h", y=-0.2), height=420)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], aurocs: dict[str, float]) -> go.Figure:
    """ROC curves for "wrong", overlaid, with the chance diagonal."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance (AUROC 0.5)",
                             line=dict(color="#9ca3af", dash="dot")))
    for i, (name, (fpr, tpr)) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line=dict(color=PALETTE[i % len(PALETTE)], shape="hv"),
                                 name=f"{chart(name)} (AUROC {aurocs.get(name, float('nan')):.3f})"))
    fig.update_layout(title="ROC curves for “the answer is wrong”", xaxis_title="false positive rate (right answers flagged)",
                      yaxis_title="true positive rate (wrong answers flagged)", **_LAYOUT)
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def reliability_figure(bins: pd.DataFrame, signal: str, ece: float) -> go.Figure:
    """Reliability diagram: observed share correct against the mean predicted P(correct) per bin."""
    b = bins[bins["count"] > 0]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color="#9ca3af", dash="dot")))
    fig.add_trace(go.Scatter(x=b["mean_predicted"], y=b["observed"], mode="lines+markers", name="held-out traces",
                             marker=dict(size=6 + 14 * np.sqrt(b["count"] / max(b["count"].max(), 1)),
                                         color=PALETTE[0]),
                             text=[f"{int(c)} traces" for c in b["count"]], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title=f"Reliability diagram of {chart(signal)} (ECE {ece:.3f}, held-out)",
                      xaxis_title="predicted P(correct) (logistic fit, mean per bin)",
                      yaxis_title="observed share correct", **_LAYOUT)
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def entropy_histogram_figure(hists: dict[str, pd.DataFrame], unit: str, estimator: str, scale: float = 1.0,
                             low: float = 0.01) -> go.Figure:
    """Token-entropy histograms on a log axis (share of tokens per log-spaced bin), one per run."""
    fig = go.Figure()
    for i, (name, h) in enumerate(hists.items()):
        lo = np.maximum(h["bin_low"].to_numpy() * scale, h["bin_high"].to_numpy() * scale / 10)
        mid = np.sqrt(lo * h["bin_high"].to_numpy() * scale)
        fig.add_trace(go.Scatter(x=mid, y=h["share"], mode="lines", line=dict(shape="hvh", color=PALETTE[i % len(PALETTE)]),
                                 name=chart(name), fill="tozeroy" if i == 0 else None))
    fig.add_vline(x=low * scale, line=dict(color="#dc2626", dash="dash"))
    # an annotation on a log axis is placed by log10 of its x (a shape by x itself)
    fig.add_annotation(x=np.log10(low * scale), y=1, yref="paper", yanchor="bottom", showarrow=False,
                       text=f"{low * scale:.3g} {unit}", font=dict(color="#dc2626"))
    fig.update_layout(title=f"Token entropy ({unit}, {estimator}), log axis", xaxis_type="log",
                      xaxis_title=f"token entropy H ({unit}, {estimator}; first bin: below {1e-5 * scale:.2g} {unit})",
                      yaxis_title="share of tokens per bin", **_LAYOUT)
    return fig


def top_tokens_figure(top: pd.DataFrame, title: str, n: int = 20) -> go.Figure:
    """Bar chart: the tokens most often among the run's high-entropy 20 %."""
    t = top.head(n).iloc[::-1]
    fig = go.Figure(go.Bar(x=t["count_top"], y=[chart(s) for s in t["token"]], orientation="h",
                           marker_color=PALETTE[1],
                           text=[f"{100 * s:.0f}% of its uses" for s in t["share_high"]], textposition="auto"))
    fig.update_layout(title=chart(title), xaxis_title="count among the top-20 % entropy tokens",
                      yaxis_title="token (space marker stripped, lower case)",
                      **{**_LAYOUT, "height": max(360, 22 * len(t) + 120)})
    return fig


def scatter_figure(h_a: np.ndarray, h_b: np.ndarray, names: tuple[str, str], unit: str, estimator: str,
                   max_points: int = 20_000, seed: int = 0) -> go.Figure:
    """Entropy of model B against model A at the same positions (a random subset when large)."""
    n = len(h_a)
    idx = np.arange(n) if n <= max_points else np.sort(np.random.default_rng(seed).choice(n, max_points, False))
    top = float(np.nanmax([np.nanmax(h_a) if n else 1, np.nanmax(h_b) if n else 1]))
    fig = go.Figure(go.Scattergl(x=h_a[idx], y=h_b[idx], mode="markers", marker=dict(size=4, opacity=0.4,
                                                                                     color=PALETTE[0]),
                                 name="positions"))
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", line=dict(color="#9ca3af", dash="dot"),
                             name="equal entropy"))
    shown = "" if n <= max_points else f" ({max_points:,} of {n:,} positions shown)"
    fig.update_layout(title=f"Token entropy, same positions{shown}",
                      xaxis_title=f"H of {chart(names[0])} ({unit}, {estimator})",
                      yaxis_title=f"H of {chart(names[1])} ({unit}, {estimator})", **_LAYOUT)
    return fig


def binned_change_figure(binned: pd.DataFrame, names: tuple[str, str], unit: str, estimator: str) -> go.Figure:
    """Mean entropy change B − A per percentile bin of A's entropy."""
    fig = go.Figure(go.Bar(x=binned["percentile"], y=binned["mean_diff"], marker_color=PALETTE[2],
                           text=[f"n={int(c)}" for c in binned["count"]], textposition="outside"))
    fig.update_layout(title=f"Entropy change by {chart(names[0])}'s entropy percentile",
                      xaxis_title=f"percentile of H under {chart(names[0])} (%)",
                      yaxis_title=f"mean H_B − H_A ({unit}, {estimator})", **_LAYOUT)
    return fig


def pair_curves_figure(pos: pd.DataFrame, names: tuple[str, str], unit: str, estimator: str,
                       scale: float = 1.0) -> go.Figure:
    """Both models' entropy along one trace, and their difference."""
    fig = go.Figure()
    x = pos["pos_a"]
    fig.add_trace(go.Scatter(x=x, y=pos["h_a"] * scale, mode="lines", name=chart(names[0]),
                             line=dict(color=PALETTE[0])))
    fig.add_trace(go.Scatter(x=x, y=pos["h_b"] * scale, mode="lines", name=chart(names[1]),
                             line=dict(color=PALETTE[1])))
    fig.add_trace(go.Bar(x=x, y=pos["diff"] * scale, name="H_B − H_A", marker_color="rgba(234,88,12,0.45)"))
    fig.update_layout(title="Both models along the trace", xaxis_title="token position (model A's tokens)",
                      yaxis_title=f"token entropy ({unit}, {estimator})", barmode="overlay", **_LAYOUT)
    return fig


def checkpoint_figure(table: pd.DataFrame, unit: str, estimator: str, scale: float = 1.0) -> go.Figure:
    """Mean token entropy (left axis) and accuracy with its interval (right axis) against step."""
    t = table.sort_values("step")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t["step"], y=t["mean_entropy"] * scale, mode="lines+markers",
                             name=f"mean token entropy ({unit}, {estimator})", line=dict(color=PALETTE[0])))
    acc = 100 * t["accuracy"]
    fig.add_trace(go.Scatter(x=t["step"], y=acc, mode="lines+markers", name="accuracy (% of graded, 95% Wilson)",
                             yaxis="y2", line=dict(color=PALETTE[3]),
                             error_y=dict(type="data", symmetric=False, array=100 * t["acc_high"] - acc,
                                          arrayminus=acc - 100 * t["acc_low"])))
    fig.add_trace(go.Scatter(x=t["step"], y=100 * t["high_share"], mode="lines+markers", yaxis="y2",
                             name="high-entropy tokens (% above the first step's top-20 % threshold)",
                             line=dict(color=PALETTE[2], dash="dash")))
    fig.update_layout(title="Entropy and accuracy over training", xaxis_title="checkpoint step",
                      yaxis_title=f"mean token entropy ({unit}, {estimator})",
                      yaxis2=dict(title="%", overlaying="y", side="right", range=[0, 100]),
                      **{**_LAYOUT, "legend": dict(orientation="h", y=-0.3), "height": 460})
    return fig


def accuracy_entropy_figure(table: pd.DataFrame, fit, unit: str, estimator: str, scale: float = 1.0) -> go.Figure:
    """Accuracy against mean entropy per checkpoint, with the fit R = -a exp(H) + b (in nats)."""
    t = table.dropna(subset=["accuracy", "mean_entropy"])
    fig = go.Figure(go.Scatter(x=t["mean_entropy"] * scale, y=100 * t["accuracy"], mode="markers+text",
                               text=[f"step {s:g}" for s in t["step"]], textposition="top center",
                               marker=dict(size=10, color=PALETTE[3]), name="checkpoints"))
    if fit is not None and len(t):
        h = np.linspace(t["mean_entropy"].min(), t["mean_entropy"].max(), 100)
        fig.add_trace(go.Scatter(x=h * scale, y=100 * fit.predict(h), mode="lines", line=dict(color=PALETTE[0]),
                                 name=f"R = −{fit.a:.3g}·exp(H) + {fit.b:.3g} (H in nats)"))
    fig.update_layout(title="Accuracy against entropy (The Entropy Mechanism, arXiv 2505.22617)",
                      xaxis_title=f"mean token entropy ({unit}, {estimator})",
                      yaxis_title="accuracy (% of graded)", **_LAYOUT)
    return fig

