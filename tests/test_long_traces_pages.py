"""The explorer and Layers pages on long synthetic traces, through AppTest: the text window,
fork outlines, caches that are read once per trace, honest lexicon messages, readable layers."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from analysis.store import Store
from tests.browser import ROOT
from tests.helpers import chart_json, chart_specs
from tests.long_traces import layer_trace_store, long_trace_store

EXPLORER = str(ROOT / "dashboard" / "views" / "explorer.py")
LAYERS = str(ROOT / "dashboard" / "views" / "layers.py")


@pytest.fixture(scope="module")
def long_store(tmp_path_factory):
    return long_trace_store(tmp_path_factory.mktemp("long") / "long.duckdb", n_tokens=3000)


@pytest.fixture(scope="module")
def layers_store(tmp_path_factory):
    return layer_trace_store(tmp_path_factory.mktemp("layers") / "layers.duckdb", n_traces=2, n_tokens=300,
                             n_layers=12)


def page(path: str, store: Store, monkeypatch) -> AppTest:
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(path, default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def rerun(at: AppTest) -> AppTest:
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def values(v) -> np.ndarray:
    """A plotly spec array: a list, or plotly's typed array ({'dtype', 'bdata'} in base64)."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
    return np.asarray(v, dtype=np.float64)


def html_bodies(at: AppTest) -> list[str]:
    return [h.proto.body for h in at.get("html")]


def text_positions(at: AppTest) -> list[int]:
    body = next(b for b in html_bodies(at) if 'class="ts-text"' in b)
    return [int(p) for p in re.findall(r'<span class="tok" data-pos="(\d+)"', body)]


def marked_positions(at: AppTest) -> list[int]:
    css = "".join(b for b in html_bodies(at) if "<style>.ts-text .tok[data-pos" in b)
    return [int(p) for p in re.findall(r'data-pos="(\d+)"\]', css)]


def test_long_trace_shows_a_text_window_with_its_forks_outlined(long_store, monkeypatch):
    at = page(EXPLORER, long_store, monkeypatch)
    assert text_positions(at) == list(range(1500))
    forks = int({m.label: m.value for m in at.metric}["Forking points"])
    table = at.dataframe[0].value
    assert len(table) == forks and forks > 0
    marked = marked_positions(at)
    assert marked == [p for p in table["position"] if p < 1500] and marked
    assert any(c.startswith("window entropy (next 4; nats, full)") for c in table.columns)
    at.slider(key="explorer.range.1").set_value((1500, 3000))
    rerun(at)
    assert text_positions(at) == list(range(1500, 3000))
    assert marked_positions(at) == [p for p in at.dataframe[0].value["position"] if p >= 1500]


def test_controls_reuse_the_trace_read_once(long_store, monkeypatch):
    """Moving a slider, the unit or the estimator never reads the trace from the store again."""
    calls = []
    original = Store.tokens
    monkeypatch.setattr(Store, "tokens", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    at = page(EXPLORER, long_store, monkeypatch)
    at.slider(key="explorer.w").set_value(7)
    rerun(at)
    assert "next 7 tokens" in chart_json(at)[0]
    at.slider(key="explorer.pct").set_value(90.0)
    rerun(at)
    at.selectbox(key="explorer.estimator").set_value("topk_renorm")
    rerun(at)
    at.session_state["unit"] = "bits"
    rerun(at)
    spec = chart_specs(at)[0]
    assert spec["layout"]["yaxis"]["title"]["text"] == "entropy H (bits, topk_renorm)"
    assert "entropy (bits, topk_renorm)" in next(b for b in html_bodies(at) if 'class="ts-text"' in b)
    assert len(calls) == 1, calls


def test_lexicon_message_says_what_happened(long_store, monkeypatch):
    at = page(EXPLORER, long_store, monkeypatch)
    at.toggle(key="explorer.use_lexicon").set_value(True)
    at.text_area(key="explorer.lexicon").set_value("zzzz-not-a-token")
    rerun(at)
    captions = " ".join(c.value for c in at.caption)
    assert "positions reach the threshold, but none is a lexicon token" in captions
    assert "No position reaches the threshold" not in captions
    assert {m.label: m.value for m in at.metric}["Forking points"] == "0"


def test_layers_page_is_labelled_and_reads_each_trace_once(layers_store, monkeypatch):
    calls = []
    original = Store.token_layers
    monkeypatch.setattr(Store, "token_layers", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    at = page(LAYERS, layers_store, monkeypatch)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = specs[0]
    ticks = heat["layout"]["xaxis"]["ticktext"]
    assert len(ticks) <= 24 and all(t.strip() for t in ticks)
    assert "nats" in heat["data"][0]["hovertemplate"] and "top-1 at this layer" in heat["data"][0]["hovertemplate"]
    bands = [t for spec in specs for t in spec["data"] if t.get("fill") == "toself"]
    assert bands  # the lens profile's ±1 sd band; entropies are never negative, nor is the band
    assert all(np.nanmin(values(t["y"])) >= 0 for t in bands)
    n_charts = len(specs)
    at.toggle(key="layers.show_heads").set_value(True)
    rerun(at)
    assert len(at.get("plotly_chart")) == n_charts + 1
    at.slider(key="layers.split_pct").set_value(30)
    at.session_state["unit"] = "bits"
    rerun(at)
    assert all(m.value.endswith("bits") for m in at.metric)
    assert len(calls) == 1, calls


def test_estimator_comparison_is_drawn_on_request_in_the_page_unit(long_store, monkeypatch):
    at = page(EXPLORER, long_store, monkeypatch)
    n_charts = len(chart_specs(at))
    assert n_charts == 1  # the entropy curve only
    at.toggle(key="explorer.compare_estimators").set_value(True)
    at.session_state["unit"] = "bits"
    rerun(at)
    specs = chart_specs(at)
    assert len(specs) == 2
    comparison = specs[1]
    names = [t.get("name") for t in comparison["data"]]
    assert "y = x" in names and len(names) >= 2
    assert "bits" in comparison["layout"]["xaxis"]["title"]["text"]
    # its x axis is the full entropy in bits, the values the curve draws (estimator full)
    full, curve = values(comparison["data"][0]["x"]), values(specs[0]["data"][0]["y"])
    assert at.selectbox(key="explorer.estimator").value == "full"
    assert np.allclose(np.sort(full[np.isfinite(full)]), np.sort(curve[np.isfinite(curve)]))


def test_forking_points_link_to_their_branches(long_store, monkeypatch):
    at = page(EXPLORER, long_store, monkeypatch)
    table = at.dataframe[0].value
    assert len(table) and list(table["branches"]) == [f"branches?run=1&trace=1&pos={p}" for p in table["position"]]
    # and the Branches page opens there (the position's panel, before any branch is made)
    monkeypatch.setenv("THINKSCOPE_STORE", str(long_store.path))
    pos = int(table["position"].iloc[0])
    br = AppTest.from_file(str(ROOT / "dashboard" / "views" / "branches.py"), default_timeout=120)
    br.query_params.update({"run": "1", "trace": "1", "pos": str(pos)})
    br.run()
    assert not br.exception, [e.value for e in br.exception]
    assert any(h.value.startswith("Position t") and f" {pos}" in h.value for h in br.subheader), \
        [h.value for h in br.subheader]
