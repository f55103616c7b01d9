"""Token text rendering: colours readable everywhere on the scale, hover cards, escaping."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from dashboard import charts, charts_layers, tokens
from dashboard.text import chart


def test_luminance_and_contrast_match_wcag_reference_values():
    lum = tokens.relative_luminance(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]))
    assert np.allclose(lum[:2], [1.0, 0.0])
    assert abs(lum[2] - 0.2126) < 1e-4 and abs(lum[3] - 0.2158605) < 1e-4
    assert abs(tokens.contrast_ratio(1.0, 0.0) - 21.0) < 1e-9
    # #767676 on white is the classic 4.54:1
    grey = tokens.relative_luminance(np.array([0x76, 0x76, 0x76]))
    assert abs(tokens.contrast_ratio(grey, 1.0) - 4.54) < 0.01


def test_text_contrast_is_at_least_4_5_everywhere_on_the_scale():
    x = np.linspace(0.0, 1.0, 2001)
    rgb = tokens.scale_rgb(x)
    fg = tokens.text_colors(rgb)
    fg_rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in fg], dtype=float)
    ratio = tokens.contrast_ratio(tokens.relative_luminance(rgb), tokens.relative_luminance(fg_rgb))
    assert ratio.min() >= tokens.MIN_CONTRAST, (x[ratio.argmin()], ratio.min())
    # the dark end of the scale gets white text, the light end black
    assert fg[0] == tokens.DARK and fg[-1] == tokens.LIGHT
    # the colours actually sent (rounded to hex), the missing-value grey included
    bg, fg = tokens.token_colors(np.array([*np.linspace(0, 3, 301), np.nan]), 3.0)
    to_rgb = lambda cs: np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in cs], dtype=float)
    ratio = tokens.contrast_ratio(tokens.relative_luminance(to_rgb(bg)), tokens.relative_luminance(to_rgb(fg)))
    assert ratio.min() >= tokens.MIN_CONTRAST
    assert bg[-1] == tokens.NA_BACKGROUND


def test_labels_make_whitespace_visible():
    assert tokens.label_token(" ") == "␣"
    assert tokens.label_token("\n\n") == "↵↵"
    assert tokens.label_token(" \t") == "␣⇥"
    assert tokens.label_token(" the") == "␣the"
    assert tokens.label_token("a\nb") == "a↵b"
    assert tokens.label_token("") == "∅"


def test_alternatives_text_handles_ragged_rows_and_missing_slots():
    alts = tokens.alternatives_text([[" a", "b", "c"], None, ["x"]],
                                    [np.log([0.5, 0.25, 0.125]), None, np.array([-np.inf])], 3, limit=2)
    assert alts[0].splitlines()[2:] == [" 50.00 %  ' a'", " 25.00 %  'b'"]
    assert "top-2 alternatives" in alts[0]
    assert alts[1] == "" and alts[2] == ""  # no row; a slot with probability 0 is left out


def test_token_spans_escape_text_and_carry_a_hover_card():
    toks = ["<script>alert(1)</script>", ' "q"', "\n", "&amp;"]
    alts = tokens.alternatives_text([["<img src=x>", '"'], ["a"], ["b"], ["c"]],
                                    [np.log([0.6, 0.3]), np.log([0.9]), np.log([0.9]), np.log([0.9])], 4)
    body = tokens.token_spans(toks, np.array([0.1, 2.0, np.nan, 1.0]), 2.0, "bits", "topk_renorm", alts,
                              boundary=12, offset=10, marks=[11])
    assert isinstance(body, tokens.Markup) and body._repr_html_() == str(body)
    assert "<script>" not in body and "<img" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&amp;amp;" in body
    spans = re.findall(r'<span class="tok" data-pos="(\d+)" title="([^"]*)" style="([^"]*)">', body)
    assert [int(p) for p, _, _ in spans] == [10, 11, 12, 13]
    title = spans[0][1]
    assert "entropy (bits, topk_renorm): 0.100" in title and "60.00 %" in title and "&lt;img src=x&gt;" in title
    assert "entropy (bits, topk_renorm): n/a" in spans[2][1]
    assert "outline" in spans[1][2] and "outline" not in spans[0][2]
    # the card: CSS draws the title, so it shows at once (not only the late native tooltip)
    assert re.search(r"\.tok:hover::after\s*\{[^}]*content:\s*attr\(title\)", body)
    assert body.index('class="ts-boundary"') < body.index('data-pos="12"')
    assert "↵" in body  # the newline token can be seen and hovered


def test_fork_marks_css_selects_the_positions():
    css = tokens.fork_marks_css([3, 17])
    assert '.tok[data-pos="3"]' in css and '.tok[data-pos="17"]' in css and "outline" in css
    assert tokens.fork_marks_css([]) == ""


def test_trace_text_keeps_every_estimator_and_is_read_only():
    tok = pd.DataFrame({"token": [" a", None, "b"], "entropy_full": [1.0, 2.0, 3.0],
                        "entropy_epr": [np.nan, np.nan, np.nan],
                        "topk_tokens": [[" a", "x"], ["y"], None],
                        "topk_logprobs": [np.log([0.7, 0.2]), np.log([0.9]), None]})
    tt = tokens.trace_text(tok, {"full": "entropy_full", "epr": "entropy_epr", "topk_tail": "entropy_topk_tail"})
    assert list(tt.entropy) == ["full"] and tt.n == 3
    assert tt.text == " ab" and list(tt.offsets) == [0, 2, 2, 3]
    assert list(tt.labels) == ["␣a", "∅", "b"]
    assert not tt.entropy["full"].flags.writeable and not tt.alternatives.flags.writeable


def test_charts_token_html_keeps_its_pair_interface():
    body = charts.token_html(["a", "b"], np.array([0.5, 1.0]), 1.0, "nats", "full",
                             [[("x", np.log(0.5))], []], marks={1}, boundary=None)
    assert body.count('class="tok"') == 2 and "50.00 %  &#x27;x&#x27;" not in body and "50.00 %  'x'" in body


def test_curve_hover_and_axes_name_quantity_unit_and_estimator():
    n = 50
    h = np.linspace(0.1, 2.0, n)
    labels = np.array([chart(tokens.label_token(t)) for t in [" x"] * n], dtype=object)
    fig = charts.entropy_curve(labels, h, h, 1.0, np.array([3, 7]), "bits", "topk_renorm", 4, boundary=40)
    templates = [t.hovertemplate for t in fig.data if t.hovertemplate]
    assert any("H = %{y:.3f} bits (topk_renorm)" in t for t in templates)
    assert any("window H (next 4) = %{y:.3f} bits (topk_renorm)" in t for t in templates)
    assert fig.layout.yaxis.title.text == "entropy H (bits, topk_renorm)"
    assert any(t.name == "threshold τ = 1.000 bits" for t in fig.data)
    assert fig.data[0].customdata[0] == "␣x"


def test_layer_profile_band_never_goes_below_zero():
    df = pd.DataFrame({"group": "g", "layer": [1, 2, 3], "mean": [0.2, 1.0, 0.1], "lo": [-0.5, 0.4, -0.2],
                       "hi": [0.9, 1.6, 0.4], "n": [5, 5, 5]})
    fig = charts_layers.layer_profile(df, "logit-lens entropy", "nats", "mean over tokens")
    band = fig.data[0]
    assert band.fill == "toself" and min(band.y) == 0.0 and max(band.y) == 1.6
    assert "(mean over tokens)" in fig.data[1].hovertemplate and "nats" in fig.data[1].hovertemplate
    assert fig.layout.yaxis.rangemode == "tozero"


def test_heatmap_ticks_are_a_readable_subset_with_visible_whitespace():
    n = 120
    toks = [" ", "\n", " word"] * 40
    fig = charts_layers.layer_heatmap(np.random.default_rng(0).random((n, 30)), list(range(1, 31)), toks,
                                      "attention entropy", "nats", "mean over heads", offset=200)
    ax = fig.layout.xaxis
    assert len(ax.tickvals) <= 24 and ax.tickvals[0] == 200 and ax.tickvals[1] - ax.tickvals[0] == 5
    assert all(t.strip() for t in ax.ticktext) and ax.ticktext[:3] == ("␣", "␣word", "↵")
    assert "every 5 positions" in ax.title.text
    assert fig.data[0].customdata.shape == (30, n, 2)  # no top-1 tokens: position and token only
    hover = fig.data[0].hovertemplate
    assert "nats (mean over heads)" in hover
