"""Seeded random walks that try to break every page: page switches, run and trace picks, unit
toggles, links opened, and any widget set to any of its options, in any order, through
AppTest on a store of varied runs (tests/varied_store.py).

Widgets are driven the way the browser drives them: a choice is sent as the option's text
(what the frontend holds), and one rule sends the text an option had *before* the last
change, as a browser tab whose widget still shows an old option does. After every step: no
exception on the page, and every run, trace and unit shown belongs to the current choice.

Bounded for CI (``THINKSCOPE_STATE_WALKS`` walks of ``THINKSCOPE_STATE_STEPS`` steps); a
failure prints its walk's steps and seed; ``THINKSCOPE_STATE_SEED=N`` replays that walk alone.
A walk's choices depend only on its seed and on what the pages show.
"""

from __future__ import annotations

import os
import random
import re

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from tests.browser import ROOT
from tests.varied_store import varied_store

APP = str(ROOT / "dashboard" / "app.py")
PAGES = sorted(p.name for p in (ROOT / "dashboard" / "views").glob("*.py"))
# buttons that only move state around; the ones that generate, replay, import or delete are
# tested on their own (and would make the walk slow)
SAFE_BUTTONS = {"early_stop.use_mean", "early_stop.use_info"}
SKIP_KEYS = ("generate.", "upload.", "store.")  # inputs of long actions, tested on their pages
WALKS = int(os.environ.get("THINKSCOPE_STATE_WALKS", "6"))
STEPS = int(os.environ.get("THINKSCOPE_STATE_STEPS", "15"))

_store = {}


def store_path(tmp_path_factory) -> str:
    if "path" not in _store:
        path = tmp_path_factory.mktemp("state") / "varied.duckdb"
        store = varied_store(path)
        _store["path"] = str(path)
        _store["traces"] = {int(r): set(int(t) for t in store.traces(int(r))["trace_id"])
                            for r in store.runs()["run_id"]}
    return _store["path"]


def send(widget, **value) -> None:
    """Make the next run receive ``value`` for ``widget``, as the frontend would send it."""
    ws = WidgetState()
    ws.id = widget.id
    for field, v in value.items():
        target = getattr(ws, field)
        if field.endswith("_array_value"):
            target.data[:] = v
        else:
            setattr(ws, field, v)
    widget.__class__ = type(widget.__class__.__name__, (widget.__class__,),
                            {"_widget_state": property(lambda self: ws)})


def widgets(at, kinds=("selectbox", "radio", "multiselect", "slider", "checkbox", "toggle", "number_input")):
    out = []
    for kind in kinds:
        for w in at.get(kind):
            if w.key and w.key.startswith(SKIP_KEYS) or getattr(w, "disabled", False):
                continue
            out.append((kind, w))
    return out


class Walk:
    """One walk: a session of the app driven by ``rng``; ``log`` holds the steps taken."""

    def __init__(self, path: str, rng: random.Random):
        self.path, self.rng, self.log = path, rng, []
        self.open(None, None, rng.choice(PAGES))

    def step(self) -> None:
        rule = self.rng.choices([self.switch_page, self.set_unit, self.pick_run_or_trace, self.poke,
                                 self.stale_option, self.press, self.open_link],
                                weights=[3, 2, 3, 6, 2, 1, 1])[0]
        rule()
        assert not self.at.exception, [e.value for e in self.at.exception]
        self.check_shown()

    def note(self, text: str) -> None:
        self.log.append(text)

    def open(self, run, trace, page) -> None:
        """A fresh session, opened on ``page`` with a link's ``run`` and ``trace`` (None: not in it)."""
        self.at = AppTest.from_file(APP, default_timeout=120)
        self.at.session_state["store.path"] = self.path
        for name, v in (("run", run), ("trace", trace)):
            if v is not None:
                self.at.query_params[name] = str(v)
        self.seen: dict[str, list[str]] = {}  # widget id -> the options it showed before
        self.note(f"open {page} with run={run} trace={trace}")
        self.at.run()
        self.go(page)

    def go(self, page) -> None:
        self.at.switch_page(f"views/{page}")
        self.run()

    def run(self) -> None:
        for _kind, w in widgets(self.at, ("selectbox", "radio", "multiselect")):
            self.seen[w.id] = list(w.options)
        self.at.run()

    # ------------------------------------------------------------------ steps
    def switch_page(self) -> None:
        page = self.rng.choice(PAGES)
        self.note(f"switch to {page}")
        self.go(page)

    def set_unit(self) -> None:
        unit = self.rng.choice(["nats", "bits"])
        for r in self.at.sidebar.radio:
            if r.label == "Entropy unit":
                self.note(f"unit {unit}")
                r.set_value(unit)
                self.run()

    def pick_run_or_trace(self) -> None:
        boxes = [b for b in self.at.selectbox if b.label in ("Run", "Trace") and b.options]
        if boxes:
            box = self.rng.choice(boxes)
            self.choose(box, self.rng.choice(box.options))

    def choose(self, w, option: str) -> None:
        self.note(f"{w.label!r} ({w.key}) <- {option!r}")
        send(w, string_value=option)
        self.run()

    def poke(self) -> None:
        """Any widget of the page to any value it offers."""
        ws = widgets(self.at)
        if not ws:
            return
        kind, w = self.rng.choice(ws)
        r = self.rng
        if kind in ("selectbox", "radio"):
            if w.options:
                self.choose(w, r.choice(w.options))
            return
        if kind == "multiselect":
            picked = r.sample(w.options, r.randint(0, min(8, len(w.options))))
            self.note(f"{w.label!r} ({w.key}) <- {picked!r}")
            send(w, string_array_value=picked)
        elif kind == "slider":
            lo, hi = w.min, w.max
            ints = w.proto.data_type == w.proto.DataType.INT

            def draw():
                return r.randint(int(lo), int(hi)) if ints else r.uniform(float(lo), float(hi))
            v = tuple(sorted((draw(), draw()))) if isinstance(w.value, (tuple, list)) else draw()
            self.note(f"slider {w.label!r} ({w.key}) <- {v!r}")
            w.set_value(v)
        elif kind in ("checkbox", "toggle"):
            self.note(f"{kind} {w.label!r} ({w.key}) <- {not w.value}")
            w.set_value(not w.value)
        else:
            lo = w.min if w.min is not None else 0
            hi = min(w.max if w.max is not None else lo + 100, lo + 1000)
            v = r.uniform(float(lo), float(hi)) if isinstance(w.value, float) else r.randint(int(lo), int(hi))
            self.note(f"number {w.label!r} ({w.key}) <- {v!r}")
            w.set_value(v)
        self.run()

    def stale_option(self) -> None:
        """A widget sends an option it showed before the last change (a browser's stale copy)."""
        stale = [(k, w) for k, w in widgets(self.at, ("selectbox", "radio", "multiselect"))
                 if set(self.seen.get(w.id, [])) - set(w.options)]
        if not stale:
            return
        kind, w = self.rng.choice(stale)
        old = self.rng.choice(sorted(set(self.seen[w.id]) - set(w.options)))
        self.note(f"stale {w.label!r} ({w.key}) <- {old!r}")
        if kind == "multiselect":
            send(w, string_array_value=[old])
        else:
            send(w, string_value=old)
        self.run()

    def press(self) -> None:
        buttons = [b for b in self.at.button if b.key in SAFE_BUTTONS and not b.disabled]
        if buttons:
            b = self.rng.choice(buttons)
            self.note(f"press {b.key}")
            b.click()
            self.run()

    def open_link(self) -> None:
        r = self.rng
        run = r.choice([None, r.randint(0, 10)])
        trace = r.choice([None, r.randint(0, 90), "x"])
        self.open(run, trace, r.choice(["explorer.py", "layers.py", "early_stop.py", "difficulty.py", "runs.py"]))

    # ------------------------------------------------------------------ what must hold
    def check_shown(self) -> None:
        """The run, traces and unit shown are the current choice's."""
        at = self.at
        runs = [b for b in at.selectbox if b.label == "Run"]
        if not runs:
            return
        run_id = runs[0].value
        shared = at.session_state["selected.run_id"] if "selected.run_id" in at.session_state else None
        if shared is not None:
            assert run_id == shared, f"page shows run {run_id}, the shared choice is {shared}"
        assert at.query_params.get("run") in (str(run_id), [str(run_id)]), f"URL {at.query_params}, run {run_id}"
        own = _store["traces"][run_id]
        for box in at.selectbox:
            if box.label == "Trace":
                assert box.value in own, f"trace {box.value} is not in run {run_id}"
                assert len(box.options) <= len(own)
        for ms in at.multiselect:
            if ms.label == "Traces to draw":
                assert set(ms.value) <= own, (ms.value, run_id)
                for opt in ms.options:
                    assert int(re.match(r"trace (\d+)", opt).group(1)) in own, (opt, run_id)
        unit = at.session_state["unit"] if "unit" in at.session_state else "nats"
        other = "bits" if unit == "nats" else "nats"
        shown = [m.label for m in at.metric] + [m.value for m in at.metric]
        shown += [w.label for _k, w in widgets(at, ("selectbox", "slider", "number_input"))]
        shown += [o for b in at.selectbox for o in b.options]
        shown += [str(c) for d in at.dataframe for c in d.value.columns]
        wrong = [s for s in shown if re.search(rf"\b{other}\b", s)]
        assert not wrong, f"unit is {unit}, but the page shows {wrong}"


@pytest.mark.slow
def test_no_page_breaks_under_random_use(tmp_path_factory):
    path = store_path(tmp_path_factory)
    only = os.environ.get("THINKSCOPE_STATE_SEED")
    for seed in [int(only)] if only else range(WALKS):
        walk = None
        try:
            walk = Walk(path, random.Random(seed))
            for _ in range(STEPS):
                walk.step()
        except Exception as e:
            steps = "\n".join(f"  {n + 1}. {s}" for n, s in enumerate(walk.log if walk else []))
            raise AssertionError(f"walk {seed} broke after these steps (replay: THINKSCOPE_STATE_SEED={seed}):\n"
                                 f"{steps}\n{type(e).__name__}: {e}") from e
