"""The Layers page: AppTest over a store with and without layer records, and a real browser."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from streamlit.testing.v1 import AppTest

from analysis.record import GenerationSettings, Prompt, record_run
from dashboard import charts_layers
from tests.browser import ROOT, browser_page, streamlit_server, wait_for_app

PAGE = str(ROOT / "dashboard" / "views" / "layers.py")
PROMPTS = [Prompt("What is 12 + 7?", {"problem_id": "a", "level": 1.0, "correct": True}),
           Prompt("Tom has 3 apples", {"problem_id": "b", "level": 2.0, "correct": False})]


@pytest.fixture(scope="module")
def layer_store(tmp_path_factory, tiny_lm):
    """Run 1 without layer records, run 2 with the logit lens and attention entropy."""
    from analysis.store import Store

    store = Store(tmp_path_factory.mktemp("layers") / "layers.duckdb")
    record_run(store, tiny_lm, PROMPTS, GenerationSettings(max_new_tokens=16, top_k=5), "plain")
    settings = GenerationSettings(max_new_tokens=16, samples=2, top_k=5, logit_lens=True,
                                  attention_entropy=True)
    record_run(store, tiny_lm, PROMPTS, settings, "with layers")
    return store


def run_page(store, monkeypatch, run_id: int | None = None) -> AppTest:
    monkeypatch.setenv("THINKSCOPE_STORE", str(store.path))
    at = AppTest.from_file(PAGE, default_timeout=60)
    if run_id is not None:
        at.session_state["selected.run_id"] = run_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_page_without_layer_data_says_how_to_record(layer_store, monkeypatch):
    at = run_page(layer_store, monkeypatch, run_id=1)
    assert any("--logit-lens" in i.value and "--attention-entropy" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_page_draws_heatmaps_profiles_and_split(layer_store, monkeypatch):
    at = run_page(layer_store, monkeypatch, run_id=2)
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert len(keys) >= 5, keys  # two heatmaps, two profiles, comparison, scatter
    labels = [m.label for m in at.metric]
    assert labels == ["anchors: mean token entropy", "middle: mean token entropy",
                      "explorers: mean token entropy"]
    for by in ("difficulty", "correct", "trace"):
        at.radio(key="layers.by").set_value(by).run()
        assert not at.exception, (by, [e.value for e in at.exception])
    at.radio(key="layers.attn_variant").set_value("normalised").run()
    at.selectbox(key="layers.field").set_value("attn_entropy_norm").run()
    at.selectbox(key="layers.split_layer").set_value(2).run()
    at.toggle(key="layers.split_norm").set_value(False).run()
    assert not at.exception, [e.value for e in at.exception]
    nats = float(at.metric[0].value.split()[0])
    at.session_state["unit"] = "bits"
    at.run()
    assert at.metric[0].value.endswith("bits")
    assert abs(float(at.metric[0].value.split()[0]) - nats / np.log(2)) < 2e-3


def test_heatmap_escapes_token_text():
    fig = charts_layers.layer_heatmap(np.array([[1.0, 2.0], [0.5, 0.25]]), [3, 6], ["<b>x", "</script>"],
                                      "logit-lens entropy", "nats", "lens",
                                      top1=[["<img src=x>", "a"], ["b", "&"]])
    custom = fig.data[0].customdata
    assert custom.shape == (2, 2, 3)
    assert "&lt;img src=x&gt;" in custom[0, 0, 2] and "&amp;" in custom[1, 1, 2]
    assert "&lt;/script&gt;" in fig.layout.xaxis.ticktext[1]
    assert list(fig.data[0].y) == [3, 6] and "layer" in fig.layout.yaxis.title.text


def test_browser_opens_the_lens_heatmap(layer_store):
    """Real Chromium: the heatmap renders and hovering a cell shows the layer and its top-1 token."""
    with streamlit_server(layer_store.path) as url, browser_page() as page:
        page.goto(url + "/layers")
        wait_for_app(page)
        page.wait_for_selector(".js-plotly-plot .heatmaplayer", timeout=60000)
        plot = page.locator(".js-plotly-plot").first
        hovered = "() => (document.querySelector('.hoverlayer') || {}).textContent?.includes('top-1 at this layer')"
        for attempt in range(5):  # the page may still be laying out below the mouse: move again
            box = plot.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.4 + attempt, box["y"] + box["height"] * 0.5)
            try:
                page.wait_for_function(hovered, timeout=3000)
                break
            except PlaywrightTimeout:
                page.mouse.move(0, 0)
        page.wait_for_function(hovered, timeout=15000)
        text = page.locator(".hoverlayer").first.text_content()
        assert "layer" in text and "logit-lens entropy" in text and "nats" in text
