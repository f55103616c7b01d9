"""AppTest runs of the U-shape and early-stop pages on a small graded store."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.difficulty_data import make_graded_store

PAGES = Path(__file__).resolve().parent.parent / "dashboard" / "views"


@pytest.fixture
def graded_store(tmp_path):
    return make_graded_store(tmp_path / "graded.duckdb")


def _page(name, store) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=60)
    at.session_state["store.path"] = str(store.path)
    return at


def tau_slider(at):
    """The early-stop threshold slider (its key is scoped by run, estimator, rule and unit)."""
    found = [s for s in at.slider if s.label.startswith("Threshold τ")]
    assert len(found) == 1, [s.label for s in at.slider]
    return found[0]


def _no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_difficulty_page_levels_and_two_runs(graded_store):
    at = _page("difficulty.py", graded_store).run()
    _no_errors(at)
    assert len(at.get("plotly_chart")) == 1
    assert any("entropy change" in m.label for m in at.metric)
    at.checkbox(key="difficulty.compare").check().run()
    _no_errors(at)
    assert len(at.dataframe) == 2  # one table per run, side by side
    at.radio(key="difficulty.phase").set_value("thinking").run()
    at.radio(key="difficulty.axis").set_value("pass_rate").run()
    _no_errors(at)
    assert "easy" in at.selectbox(key=f"difficulty.easy.{1}").options


def test_difficulty_page_bad_edges_message(graded_store):
    at = _page("difficulty.py", graded_store).run()
    at.text_input(key="difficulty.level_edges").input("3, 1").run()
    assert at.error and "increasing" in at.error[0].value


def test_difficulty_page_bits_changes_axis(graded_store):
    at = _page("difficulty.py", graded_store)
    at.session_state["unit"] = "bits"
    at.run()
    _no_errors(at)
    import json
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "bits, full" in fig["layout"]["yaxis"]["title"]["text"]


def test_early_stop_page_gate_and_streaming(graded_store):
    at = _page("early_stop.py", graded_store).run()
    _no_errors(at)
    labels = [m.label for m in at.metric]
    assert "τ_mean" in labels and "τ_info" in labels
    assert any("tokens saved" in lab for lab in labels)
    assert len(at.get("plotly_chart")) >= 3
    before = [m.value for m in at.metric if "tokens saved" in m.label]
    slider = tau_slider(at)
    slider.set_value(slider.max).run()
    _no_errors(at)
    after = [m.value for m in at.metric if "tokens saved" in m.label]
    assert before != after
    at.radio(key="early_stop.mode").set_value("gate").run()
    _no_errors(at)
    at.button(key="early_stop.use_mean").click().run()
    _no_errors(at)
    # replay is offered only where the run's model can be loaded: say why not
    assert any("Replay is not available" in i.value for i in at.info)


def test_early_stop_page_needs_grades(tmp_path):
    import numpy as np

    from analysis.store import Store
    from analysis.trace import Trace

    store = Store(tmp_path / "ungraded.duckdb")
    rid = store.create_run("plain", "test")
    store.add_traces(rid, [Trace("q", ["a", "b"], np.zeros(2), entropy_full=np.ones(2))])
    at = _page("early_stop.py", store).run()
    assert not at.exception
    assert at.warning and "graded" in at.warning[0].value


def test_early_stop_page_in_bits(graded_store):
    at = _page("early_stop.py", graded_store)
    at.session_state["unit"] = "bits"
    at.run()
    _no_errors(at)
    assert tau_slider(at).label.startswith("Threshold τ (bits")
    assert any(m.value.endswith("bits") for m in at.metric if m.label == "τ_mean")


def test_early_stop_page_replay_with_a_model(graded_store, tiny_lm, monkeypatch):
    """Replay through the page: the run's model is 'loaded' (the tiny one) and each stop is
    forced to answer; the real accuracy appears next to the estimate."""
    import analysis.models as models

    monkeypatch.setattr(models, "resolve", lambda name: (name, None, None))
    monkeypatch.setattr(models, "load_model", lambda name=None, **kw: tiny_lm)
    at = _page("early_stop.py", graded_store).run()
    at.radio(key="early_stop.mode").set_value("streaming").run()
    slider = tau_slider(at)
    slider.set_value(slider.max).run()
    _no_errors(at)
    at.number_input(key="early_stop.answer_tokens").set_value(2).run()
    at.button(key="early_stop.replay_go").click().run()
    _no_errors(at)
    labels = {m.label: m.value for m in at.metric}
    assert "accuracy with replayed answers" in labels
    assert labels["replayed"].startswith("48 of 48")
    assert len(at.dataframe) >= 1


def test_early_stop_page_refuses_foreign_threshold_file(graded_store):
    from analysis import early_stop as es

    at = _page("early_stop.py", graded_store).run()
    cfg = es.EarlyStopConfig("some-other-model", "full", es.StopRule())
    # AppTest has no file_uploader driver: the page's check is the library's, tested here on its text
    with pytest.raises(es.EarlyStopError, match="calibrated on model 'some-other-model', this is 'tiny-llama'"):
        es.EarlyStopConfig.from_json(cfg.to_json()).check_compatible("tiny-llama", "full")
    assert at.get("download_button")


def test_difficulty_page_regrades(graded_store):
    at = _page("difficulty.py", graded_store).run()
    at.selectbox(key="difficulty.grade_rule").set_value("regex").run()
    at.text_input(key="difficulty.grade_regex").input("(").run()
    at.button(key="difficulty.regrade").click().run()
    assert at.error and "bad regular expression" in at.error[0].value
    at.text_input(key="difficulty.grade_regex").input(r"is (\d+)").run()
    at.button(key="difficulty.regrade").click().run()
    _no_errors(at)
    assert at.success and "ungraded" in at.success[0].value


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    from tests.varied_store import varied_store
    return varied_store(tmp_path_factory.mktemp("varied") / "varied.duckdb", long_tokens=200)


@pytest.mark.parametrize("page", ["difficulty.py", "early_stop.py"])
def test_pages_open_on_the_run_with_most_grades(varied, page):
    at = _page(page, varied).run()  # the newest run (#8) is ungraded; #1 has the most grades
    assert at.selectbox[0].label == "Run" and at.selectbox[0].value == 1
    _no_errors(at)


def test_difficulty_small_bins_get_no_verdict(varied):
    at = _page("difficulty.py", varied)
    at.session_state["selected.run_id"] = 2  # three levels of 4 traces each
    at.run()
    _no_errors(at)
    assert any("No verdict: 3 bin(s) hold fewer than 5 traces" in w.value for w in at.warning)
    assert not at.success
    change = [m for m in at.metric if m.label.startswith("entropy change")]
    assert change[0].value == "—" and "fewer than 5" in change[0].help
    table = at.dataframe[0].value
    assert "mean H (nats, full, all tokens)" in table.columns
    acc = table["accuracy (% of graded)"].astype(float)
    assert acc.between(0, 100).all() and (acc > 1).any()  # percent, not a fraction


def test_difficulty_missing_interval_says_why(varied):
    at = _page("difficulty.py", varied)
    at.session_state["selected.run_id"] = 6  # one trace
    at.run()
    _no_errors(at)
    table = at.dataframe[0].value
    assert list(table["95% CI low"]) == ["— (one trace)"]
    assert "None" not in table.to_string()


def test_early_stop_threshold_starts_at_tau_mean_per_run(varied):
    at = _page("early_stop.py", varied).run()
    tau_mean = float(next(m.value for m in at.metric if m.label == "τ_mean").split()[0])
    assert tau_slider(at).value == pytest.approx(tau_mean, abs=1e-3)
    tau_slider(at).set_value(tau_slider(at).max).run()
    at.selectbox[0].set_value(2).run()  # another run: its own τ_mean, not the last run's τ
    _no_errors(at)
    tau_mean2 = float(next(m.value for m in at.metric if m.label == "τ_mean").split()[0])
    assert tau_slider(at).value == pytest.approx(tau_mean2, abs=1e-3)
    drawn = at.multiselect[0]
    assert drawn.label == "Traces to draw" and drawn.value
    assert set(drawn.value) <= set(int(t) for t in varied.traces(2)["trace_id"])
