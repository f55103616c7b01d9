"""Untrusted text through dashboard.text: literal in markdown (checked with a CommonMark
parser) and escaped exactly once in plotly labels (read back from the figures)."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt

from dashboard import charts, charts_difficulty, charts_layers
from dashboard.text import chart, md

HOSTILE = '**bold** :red[red] [x](javascript:alert(1)) <b>b</b> $x^2$ "q" &amp; _i_ `c` # h'


def rendered(source: str) -> str:
    return MarkdownIt("commonmark").render(source)


def test_markdown_shows_untrusted_text_literally():
    out = rendered(md(HOSTILE))
    assert out == f"<p>{html.escape(HOSTILE)}</p>\n".replace("&#x27;", "'")
    for tag in ("<strong", "<em", "<a ", "<code", "<h1", "<b>"):
        assert tag not in out
    # every ASCII punctuation mark is escaped, so no Streamlit extension (:red[...], :emoji:, $...$) starts
    assert all(md(c) == "\\" + c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    assert "\\:red\\[" in md(HOSTILE) and "\\$x^2\\$".replace("^", "\\^") in md(HOSTILE)


def test_markdown_keeps_lines_and_shows_controls():
    assert rendered(md("a\n    b")) == "<p>a<br />\n\u00a0\u00a0\u00a0\u00a0b</p>\n"  # no code block
    assert rendered(md("x\n===")) == "<p>x<br />\n===</p>\n"  # no heading
    assert rendered(md("1. item")) == "<p>1. item</p>\n"  # no list
    assert md("a\x1b[31mb") == "a\\\\x1b\\[31mb"
    assert md("bad \ud800 surrogate") == "bad \\\\ud800 surrogate"


def test_chart_text_is_escaped_once():
    assert chart('say "hi" & <b>x</b>') == 'say "hi" &amp; &lt;b&gt;x&lt;/b&gt;'
    assert chart("100%{x}") == "100&#37;{x}"  # no hovertemplate variable pulled in
    name = 'run "q" <b>b</b>'
    box = charts.run_entropy_box(pd.DataFrame({"label": [name, name], "estimator": ["full", "full"],
                                               "value": [1.0, 2.0]}), "nats")
    assert box.data[0].name == 'run "q" &lt;b&gt;b&lt;/b&gt;'
    summary = pd.DataFrame({"run_id": [1, 1], "bin": ["1", "2"], "bin_order": [0, 1], "count": [5, 5],
                            "mean_entropy": [1.0, 0.8], "ci_low": [0.9, 0.7], "ci_high": [1.1, 0.9],
                            "accuracy": [0.5, 0.6], "graded": [5, 5], "mean_tokens": [10.0, 12.0]})
    u = charts_difficulty.u_shape_figure(summary, {1: name}, "nats", "full", "all")
    assert {t.name for t in u.data} == {'run "q" &lt;b&gt;b&lt;/b&gt;'}
    stops = charts_difficulty.stop_positions_figure(
        [{"label": name, "h": np.ones(5), "running": np.ones(5), "stop": 2}], 0.5, "nats", "full", 2, 1)
    assert all("&quot;" not in (t.name or "") and "&quot;" not in (t.hovertemplate or "") for t in stops.data)
    assert any(t.name == 'run "q" &lt;b&gt;b&lt;/b&gt;' for t in stops.data)
    prof = charts_layers.layer_profile(pd.DataFrame({"group": [name] * 2, "layer": [1, 2], "mean": [1.0, 2.0]}),
                                       "entropy", "nats", "full")
    assert prof.data[0].name == 'run "q" &lt;b&gt;b&lt;/b&gt;'


def test_threshold_file_names_and_contents_show_as_text(tmp_path):
    """A threshold file on Early stopping: its name and the values it holds reach st.error and
    st.success as text."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from analysis import early_stop as es
    from tests.difficulty_data import make_graded_store

    store = make_graded_store(tmp_path / "graded.duckdb", runs=1)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboard" / "views" / "early_stop.py"),
                           default_timeout=60)
    at.session_state["store.path"] = str(store.path)
    at.run()
    foreign = es.EarlyStopConfig(HOSTILE, "full", es.StopRule()).to_json()
    name = "**t** [x](javascript:alert(1)).json"
    for content, shown in [(b'{"kind": "x"}', [name]), (foreign.encode(), [HOSTILE])]:
        at.file_uploader(key="early_stop.upload").set_value((name, content, "application/json"))
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        out = rendered(at.error[-1].value)
        assert "<a " not in out and "<strong" not in out and "<b>" not in out, out
        for text in shown:
            assert html.escape(text, quote=False) in out.replace("&quot;", '"')
