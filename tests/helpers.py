"""Small builders shared by tests: stores filled with traces from the tiny model."""

from __future__ import annotations

from analysis.record import GenerationSettings, Prompt, record_run

PROMPTS = [Prompt("What is 12 + 7?", {"problem_id": "a", "gold_answer": "19", "level": 1.0}),
           Prompt("Tom has 3 apples and buys 5 more.", {"problem_id": "b", "gold_answer": "8", "level": 2.0})]


def fill_store(store, lm, max_new_tokens: int = 24, samples: int = 2, name: str = "tiny run") -> int:
    """Generate a small run with ``lm`` into ``store``; return its run id."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, samples=samples, batch_size=4, top_k=5)
    return record_run(store, lm, PROMPTS, settings, name).run_id


def _nodes(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _nodes(child)


def chart_json(at) -> list[str]:
    """The page's charts in page order as plotly figure JSON: each ``st.plotly_chart`` and each
    canvas line chart (``dashboard.line_chart``, which draws a plotly figure spec)."""
    import json

    out = []
    for node in _nodes(at._tree):
        if getattr(node, "type", None) == "plotly_chart":
            out.append(node.proto.spec)
        elif getattr(node, "type", None) == "bidi_component" and node.proto.component_name == "thinkscope.line_chart":
            out.append(json.loads(node.proto.json)["spec"])
    return out


def chart_specs(at) -> list[dict]:
    """:func:`chart_json`, parsed."""
    import json

    return [json.loads(s) for s in chart_json(at)]
