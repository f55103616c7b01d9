"""What keeps the Layers page quick to draw: light figure specs with margins that already hold
their labels (no automargin redraw), and a comparison chart built once per run, not per trace."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.testing.v1 import AppTest

from dashboard import charts_layers
from tests.browser import ROOT
from tests.long_traces import layer_trace_store

PAGE = str(ROOT / "dashboard" / "views" / "layers.py")


def figures():
    rng = np.random.default_rng(0)
    tokens = [f" word{i}" for i in range(120)]
    heat = charts_layers.layer_heatmap(rng.random((120, 30)), list(range(1, 31)), tokens, "logit-lens entropy",
                                       "nats", charts_layers.LENS_ESTIMATOR,
                                       top1=[[f" w{j}" for j in range(30)]] * 120, boundary=60)
    df = pd.DataFrame({"group": "mean over tokens ± 1 sd", "layer": range(1, 31), "mean": rng.random(30),
                       "lo": rng.random(30) * 0.5, "hi": rng.random(30) + 1, "n": 120})
    profile = charts_layers.layer_profile(df, "logit-lens entropy", "nats", "mean over tokens", {"mean H": 0.5})
    groups = np.array(["anchor"] * 40 + ["middle"] * 120 + ["explorer"] * 40)
    density = charts_layers.anchors_explorers_density(np.sort(rng.random(200)), rng.random(200), groups,
                                                      "attention entropy / ln(t+1) (ratio)", "nats", "full_t1")
    return heat, profile, density


def test_specs_carry_a_light_template_and_margins_that_hold_their_labels():
    for fig in figures():
        spec = json.loads(fig.to_json())
        template = spec["layout"]["template"]
        assert len(json.dumps(template)) < 1500  # not the whole plotly_white (~7 kB)
        assert template["layout"]["xaxis"]["ticklabeloverflow"] == "allow"
        margin = spec["layout"]["margin"]
        assert margin["l"] >= 50 and margin["b"] >= 50, margin
        # automargin stays on: a label longer than the margins allow still gets its room
        assert template["layout"]["xaxis"]["automargin"] and template["layout"]["yaxis"]["automargin"]
    heat = figures()[0]
    assert heat.layout.margin.b >= 80 and heat.layout.margin.r >= 120  # rotated ticks, colour bar
    assert heat.data[0].colorbar.x == 1.0
    assert "nats" in heat.data[0].colorbar.title.text and "logit-lens entropy" in heat.data[0].colorbar.title.text


def test_the_comparison_chart_is_built_once_per_run(tmp_path, monkeypatch):
    store = layer_trace_store(tmp_path / "layers.duckdb", n_traces=3, n_tokens=150, n_layers=6)
    calls = []
    original = charts_layers.layer_profile
    monkeypatch.setattr(charts_layers, "layer_profile", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    st.cache_resource.clear()
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    first = next(b for b in at.selectbox if b.label == "Trace").value
    for trace_id in sorted(set(store.traces(1)["trace_id"].astype(int)) - {first}):
        next(b for b in at.selectbox if b.label == "Trace").set_value(trace_id)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    # a profile of each picked trace, the comparison once
    assert calls.count("mean over tokens per trace") == 1, calls
    assert calls.count("mean over tokens") == 3, calls
