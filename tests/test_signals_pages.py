"""AppTest runs of the Signals and Compare pages, and the signal CLI commands over the same stores."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from analysis import cli
from analysis.store import Store
from tests.difficulty_data import make_graded_store
from tests.signals_data import make_checkpoint_store, make_single_sample_store, rescored_copy

PAGES = Path(__file__).resolve().parent.parent / "dashboard" / "views"


def _page(name, store, **state) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=120)
    at.session_state["store.path"] = str(store.path)
    for k, v in state.items():
        at.session_state[k] = v
    return at


def _text(el) -> str:
    """An element's markdown without the escapes ``md`` adds to untrusted text."""
    return el.value.replace("\\", "")


def _no_errors(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def graded_store(tmp_path):
    return make_graded_store(tmp_path / "graded.duckdb", runs=1)


def test_signals_page_on_a_graded_run(graded_store):
    at = _page("signals.py", graded_store).run()
    _no_errors(at)
    # the synthetic wrong traces keep a high entropy after the answer: the answer-phase mean wins
    assert at.success and "mean token entropy, full, answer tokens" in _text(at.success[0])
    table = at.dataframe[0].value
    assert table["signal"].iloc[0] == "mean token entropy, full, answer tokens"
    assert float(table["AUROC (wrong)"].iloc[0]) > 0.9
    assert set(table["verdict"]) <= {"better than chance", "not distinguishable from chance",
                                     "reversed (below chance)", "no interval"}
    assert any("semantic entropy" in s for s in table["signal"])
    assert any("problems" in m.value for m in at.markdown if "graded traces" in m.value)
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # ROC curves and the reliability diagram
    roc = json.loads(charts[0].proto.spec)
    assert len(roc["data"]) == 1 + len(at.multiselect(key="signals.roc").value)
    assert any(m.label.startswith("ECE (held-out") for m in at.metric)
    at.selectbox(key="signals.calib_signal").set_value("n_tokens").run()
    _no_errors(at)
    assert "length" in json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"]


def test_signals_page_one_sample_per_problem_explains_semantic_entropy(tmp_path):
    store = make_single_sample_store(tmp_path / "single.duckdb")
    at = _page("signals.py", store).run()
    _no_errors(at)
    assert any("semantic entropy and self-consistency are unavailable" in _text(i) and "one sample" in _text(i)
               for i in at.info)
    table = at.dataframe[0].value
    assert not any("semantic entropy" in s or "self-consistency" in s for s in table["signal"])
    assert any("traces" in m.value for m in at.markdown if "graded traces" in m.value)


def test_signals_page_ungraded_run_says_so(store):
    from analysis.trace import Trace
    import numpy as np
    rid = store.create_run("ungraded", "test", None, {})
    store.add_traces(rid, [Trace("p", ["a", "b"], np.zeros(2), entropy_full=np.array([0.1, 0.2]))])
    store.finish_run(rid)
    at = _page("signals.py", store).run()
    _no_errors(at)
    assert at.info and "no graded traces" in _text(at.info[0])


def test_compare_page_tokens_models_and_checkpoints(tmp_path):
    store = make_checkpoint_store(tmp_path / "steps.duckdb")
    b = rescored_copy(store, 1)
    at = _page("compare.py", store).run()
    _no_errors(at)
    labels = [m.label for m in at.metric]
    assert any("H < 0.01 nats" in x for x in labels) and any("80th percentile" in x for x in labels)
    assert any("overlap of the top-20" in x for x in labels)
    overlap = next(m.value for m in at.metric if "overlap of the top-20" in m.label)
    assert 0 < float(overlap.rstrip("%")) < 100  # B's entropies differ from A's
    assert next(m.value for m in at.metric if "positions compared" in m.label) == "100.0%"
    assert at.selectbox(key="compare.model_a").value == 1
    assert at.selectbox(key="compare.model_b.1").value == b
    # checkpoints: the fit with its intervals (four steps)
    fit = [m.value for m in at.markdown if m.value.startswith("Fit over")]
    assert fit and "95% CI" in fit[0] and "4 checkpoints" in fit[0]
    steps = at.dataframe[-1].value
    assert steps["step"].tolist() == [0, 50, 100, 200]
    # the second run side by side
    at.checkbox(key="compare.tokens_two").check().run()
    _no_errors(at)
    assert sum("80th percentile" in m.label for m in at.metric) == 2


def test_compare_page_tags_a_checkpoint(graded_store):
    at = _page("compare.py", graded_store).run()
    _no_errors(at)
    assert any("no run is tagged" in _text(i) for i in at.info)
    at.text_input(key="compare.tag_step.1").input("abc").run()
    at.button(key="compare.tag_save").click().run()
    assert at.error and "not a number" in _text(at.error[0])
    at.text_input(key="compare.tag_step.1").input("300").run()
    at.button(key="compare.tag_save").click().run()
    assert not at.exception
    from analysis.compare import checkpoint_runs
    assert checkpoint_runs(Store(graded_store.path))["step"].tolist() == [300.0]


def test_cli_tables(tmp_path, capsys):
    store = make_checkpoint_store(tmp_path / "cli.duckdb", steps=(0, 100, 200))
    b = rescored_copy(store, 1)
    p = str(store.path)
    assert cli.main(["--store", p, "signals", "1", "--resamples", "200", "--out", str(tmp_path / "s.csv"),
                     "--traces-out", str(tmp_path / "t.parquet"), "--calibrate", "mean_H.full.all",
                     "--calib-out", str(tmp_path / "cal.csv"), "--roc-out", str(tmp_path / "roc.parquet")]) == 0
    out = capsys.readouterr().out
    assert "better than chance on this run" in out and "ECE on" in out
    s = pd.read_csv(tmp_path / "s.csv")
    assert {"auroc_wrong", "auroc_ci95_low", "auroc_ci95_high", "auprc_wrong", "verdict"} <= set(s.columns)
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == 48
    cal = pd.read_csv(tmp_path / "cal.csv")
    assert len(cal) == 10 and cal["count"].sum() > 0 and cal["ece"].nunique() == 1
    roc = pd.read_parquet(tmp_path / "roc.parquet")
    assert set(s["signal"]) >= set(roc["signal"]) and roc["true_positive_rate"].max() == 1.0
    assert cli.main(["--store", p, "token-entropy", "1", str(b), "--out", str(tmp_path / "top.csv"),
                     "--hist-out", str(tmp_path / "h.parquet")]) == 0
    assert set(pd.read_csv(tmp_path / "top.csv")["run_id"]) == {1, b}
    assert cli.main(["--store", p, "compare", "1", str(b), "--out", str(tmp_path / "pos.parquet"),
                     "--bins-out", str(tmp_path / "bins.csv")]) == 0
    assert "overlap of the top-20% positions" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "bins.csv")) == 10
    assert cli.main(["--store", p, "checkpoints", "--out", str(tmp_path / "k.csv")]) == 0
    assert "fit accuracy = -a exp(H) + b over 3 checkpoints" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "k.csv")["step"].tolist() == [0, 100, 200]


def test_cli_errors_are_one_line(tmp_path, capsys):
    store = make_single_sample_store(tmp_path / "e.duckdb")
    p = str(store.path)
    assert cli.main(["--store", p, "signals", "1", "--out", str(tmp_path / "x.txt")]) == 2
    assert "unknown table format '.txt'" in capsys.readouterr().err
    assert cli.main(["--store", p, "signals", "7"]) == 2
    assert "run 7 has no traces" in capsys.readouterr().err
    assert cli.main(["--store", p, "checkpoints"]) == 2
    assert "no run is tagged" in capsys.readouterr().err
    assert cli.main(["--store", p, "checkpoint", "1", "--step", "5"]) == 0
    assert cli.main(["--store", p, "checkpoints", "1"]) == 0
    assert "no fit" in capsys.readouterr().out


def test_checkpoint_step_on_ingest_and_generate(tmp_path):
    import argparse

    from analysis.cli_signals import tag_runs_created
    from analysis.compare import checkpoint_runs

    p = str(tmp_path / "tag.duckdb")
    fixture = Path(__file__).resolve().parent / "fixtures" / "formats" / "openai_chat.jsonl"
    assert cli.main(["--store", p, "ingest", str(fixture), "--checkpoint-step", "40"]) == 0
    store = Store(p)
    assert checkpoint_runs(store)["step"].tolist() == [40.0]
    # generate: every run the command creates gets the step as it is created
    tag_runs_created(store, argparse.Namespace(checkpoint_step=80.0))
    rid = store.create_run("generated", "generate", "m", {"temperature": 0.7})
    runs = checkpoint_runs(Store(p))
    assert runs.set_index("run_id").loc[rid, "step"] == 80.0
    assert "--checkpoint-step" in cli.build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
