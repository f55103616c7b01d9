"""The explorer's entropy curve in the browser: a plotly figure drawn on a canvas.

Plotly rebuilds a figure's SVG whenever any part of it changes, and on a long trace that is
most of what a slider move or a unit toggle costs in the browser (8,000 points per line, a
hover label per token). The curve is still built, and tested, as a plotly figure
(``charts.entropy_curve``); this component sends that figure's spec and ``line_chart.js``
draws its scatter traces (lines and markers), line shapes, annotations, axis titles and
legend on a canvas, with a unified hover made from each trace's hovertemplate, a legend that
hides and shows traces, and drag-to-zoom on x (double-click resets). Text from the spec is
decoded from plotly's label escaping and only ever set as text, never as markup.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit.components.v2 as components
from plotly.io.json import to_json_plotly

_HERE = Path(__file__).resolve().parent
#: the trace types, shape types and layout parts line_chart.js draws
TRACE_TYPES = {"scatter"}
SHAPE_TYPES = {"line"}

_render = components.component(
    "thinkscope.line_chart", html='<div class="ts-lc"></div>',
    css=(_HERE / "line_chart.css").read_text(encoding="utf-8"),
    js=(_HERE / "line_chart.js").read_text(encoding="utf-8"), isolate_styles=False)


def _typed(value):
    """A 1-d numeric numpy array as plotly's typed-array encoding (what line_chart.js decodes)."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "fiub":
        a = value.astype("<f8") if value.dtype.kind == "f" else value.astype("<i4")
        return {"dtype": "f8" if value.dtype.kind == "f" else "i4", "bdata": base64.b64encode(a.tobytes()).decode()}
    return value


def figure_spec(fig: go.Figure | dict) -> str:
    """The figure as the JSON the component draws: a plotly figure, or a figure spec of plain
    values and numpy arrays (``charts.entropy_curve_spec``; numeric arrays are sent as typed
    base64, as plotly sends them). Its template is left out: the component has its own look."""
    spec = fig.to_plotly_json() if isinstance(fig, go.Figure) else fig
    data = [{k: _typed(v) for k, v in trace.items()} for trace in spec.get("data", ())]
    for trace in data:
        if trace.get("type", "scatter") not in TRACE_TYPES:
            raise ValueError(f"line_chart draws scatter traces only, not {trace.get('type')!r}")
    layout = dict(spec.get("layout", {}))
    layout.pop("template", None)
    for shape in layout.get("shapes", ()):
        if shape.get("type") not in SHAPE_TYPES:
            raise ValueError(f"line_chart draws line shapes only, not {shape.get('type')!r}")
    return to_json_plotly({"data": data, "layout": layout})


def line_chart(fig: go.Figure | dict, key: str) -> None:
    """Draw ``fig`` (scatter traces, line shapes, annotations) on a canvas in the page."""
    _render(data={"spec": figure_spec(fig)}, key=key)
