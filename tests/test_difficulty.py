"""Difficulty bins, per-bin statistics with t-intervals, the U-shape verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import difficulty as dif
from analysis.difficulty import Binning, DifficultyError
from analysis.trace import Trace


def _frame(rows):
    """rows: (run_id, problem_id, level, correct, entropy, n_tokens)"""
    df = pd.DataFrame(rows, columns=["run_id", "problem_id", "level", "correct", "entropy", "n_tokens"])
    df["trace_id"] = np.arange(len(df))
    df["sample_idx"] = df.groupby("problem_id").cumcount()
    df["n"] = df["n_tokens"]
    return df


def test_t_quantiles():
    q = dif.t975(np.array([0, 1, 2, 10, 30, 60, 1000]))
    assert np.isnan(q[0])
    assert q[1:5] == pytest.approx([12.706, 4.303, 2.228, 2.042])
    assert q[5] == pytest.approx(2.000, abs=2e-3) and q[6] == pytest.approx(1.962, abs=2e-3)


def test_level_bins_summary_by_hand():
    df = _frame([(1, "a", 1, True, 2.0, 10), (1, "b", 1, True, 4.0, 30), (1, "c", 2, False, 1.0, 50),
                 (1, "d", 2, None, 1.0, 70), (1, "e", 2, True, 1.0, 90)])
    s = dif.bin_summary(dif.assign_bins(df, Binning("level")))
    lv1 = s.iloc[0]
    assert (lv1["bin"], lv1["count"], lv1["mean_entropy"], lv1["mean_tokens"]) == ("level 1", 2, 3.0, 20.0)
    # sd = sqrt(2), half width = t(1) * sd / sqrt(2) = 12.706
    assert lv1["ci_low"] == pytest.approx(3.0 - 12.706) and lv1["ci_high"] == pytest.approx(3.0 + 12.706)
    lv2 = s.iloc[1]
    assert lv2["accuracy"] == pytest.approx(0.5) and lv2["graded"] == 2  # the ungraded trace is left out
    assert lv2["ci_low"] == pytest.approx(1.0) and lv2["ci_high"] == pytest.approx(1.0)


def test_ares_buckets_from_pass_rate():
    rows = []
    # problem p1: 3/3 correct (easy); p2: 1/3 (medium: >= 1/3); p3: 0/3 (hard); p4: ungraded
    for pid, oks in {"p1": [1, 1, 1], "p2": [1, 0, 0], "p3": [0, 0, 0], "p4": [None] * 3}.items():
        for ok in oks:
            rows.append((1, pid, None, None if ok is None else bool(ok), 1.0, 5))
    b = dif.assign_bins(_frame(rows), Binning("pass_rate"))
    got = b.groupby("problem_id")["bin"].first().to_dict()
    assert got["p1"] == "easy" and got["p2"] == "medium" and got["p3"] == "hard"
    assert pd.isna(got["p4"])
    assert b.loc[b.problem_id == "p2", "pass_rate"].iloc[0] == pytest.approx(1 / 3)


def test_user_bins_on_pass_rate_are_ordered_easy_first():
    # two samples per problem (a pass rate needs several), both with the problem's grade
    rows = [(1, f"p{i}", None, ok, 1.0, 5) for i, ok in enumerate([True, False, True, True]) for _ in range(2)]
    b = dif.assign_bins(_frame(rows), Binning("pass_rate", edges=(0, 0.5, 1.0), labels=("hard", "easy")))
    assert set(b.loc[b.correct, "bin"]) == {"easy"} and set(b.loc[~b.correct.astype(bool), "bin"]) == {"hard"}
    assert b.loc[b.bin == "easy", "bin_order"].iloc[0] == 0


def test_user_bins_on_level():
    df = _frame([(1, str(i), lv, True, 1.0, 5) for i, lv in enumerate([1, 2, 3, 4, 5, 6])])
    b = dif.assign_bins(df, Binning("level", edges=(1, 3, 5, 6)))
    assert b["bin"].tolist() == ["[1, 3)", "[1, 3)", "[3, 5)", "[3, 5)", "[5, 6]", "[5, 6]"]


def test_bad_binning_and_missing_axes():
    with pytest.raises(DifficultyError, match="increasing"):
        Binning("level", edges=(2, 1))
    with pytest.raises(DifficultyError, match="labels"):
        Binning("level", edges=(0, 1, 2), labels=("a",))
    df = _frame([(1, None, None, True, 1.0, 5)])
    with pytest.raises(DifficultyError, match="no difficulty level"):
        dif.assign_bins(df, Binning("level"))
    with pytest.raises(DifficultyError, match="no problem ids"):
        dif.assign_bins(df, Binning("pass_rate"))


def _u_rows(run, means, per_bin=8, spread=0.05):
    rng = np.random.default_rng(0)
    rows = []
    for lv, m in enumerate(means, 1):
        for j in range(per_bin):
            rows.append((run, f"{run}-{lv}-{j}", lv, True, m + spread * rng.standard_normal(), 40))
    return rows


def test_u_shape_verdict_and_change():
    df = _frame(_u_rows(1, [2.0, 1.5, 1.6, 2.2]) + _u_rows(2, [2.0, 1.9, 1.8, 1.7]))
    s = dif.bin_summary(dif.assign_bins(df))
    u1, u2 = dif.u_shape(s, 1), dif.u_shape(s, 2)
    assert u1.u_shape is True and u1.lowest == "level 2"
    e = s[(s.run_id == 1)].set_index("bin")["mean_entropy"]
    assert u1.medium == "level 2" and u1.change_pct == pytest.approx(100 * (e["level 2"] - e["level 1"]) / e["level 1"])
    assert u2.u_shape is False and "end bin" in " ".join(u2.notes)
    u = dif.u_shape(s, 1, easy="level 1", medium="level 3")
    assert u.change_pct == pytest.approx(100 * (e["level 3"] - e["level 1"]) / e["level 1"])


def test_u_shape_overlapping_intervals_is_not_significant():
    df = _frame(_u_rows(1, [2.0, 1.9, 2.0], per_bin=3, spread=0.5))
    u = dif.u_shape(dif.bin_summary(dif.assign_bins(df)), 1)
    assert u.u_shape is False and any("not significant" in n or "end bin" in n for n in u.notes)


def test_from_store_by_phase(store):
    traces = []
    for lv in (1, 2, 3):
        for s in range(2):
            h = np.array([lv, lv, 0.5, 0.5], float)
            traces.append(Trace("q", ["a", "b", "Final answer:", " 1"], np.zeros(4), entropy_full=h,
                                marker="Final answer:",
                                metadata={"problem_id": f"L{lv}", "level": float(lv), "correct": s == 0,
                                          "sample_idx": s}))
    run = store.create_run("r", "test")
    store.add_traces(run, traces)
    stats = store.trace_stats([run])
    assert "full" in dif.available_estimators(stats)
    _, think = dif.difficulty_table(stats, "full", "thinking")
    _, ans = dif.difficulty_table(stats, "full", "answer")
    # the marker token counts as thinking (metrics.phase_boundary)
    assert think["mean_entropy"].tolist() == pytest.approx([(2 * lv + 0.5) / 3 for lv in (1, 2, 3)])
    assert ans["mean_entropy"].tolist() == pytest.approx([0.5, 0.5, 0.5])
    _, pr = dif.difficulty_table(stats, "full", "all", Binning("pass_rate"))
    assert pr["bin"].tolist() == ["medium"] * 1 and pr["count"].iloc[0] == 6
    with pytest.raises(DifficultyError, match="unknown phase"):
        dif.trace_frame(stats, "full", "middle")


# --------------------------------------------------------------------------- figures


def test_figures_label_axes_and_escape_names():
    from dashboard import charts_difficulty as ch

    df = _frame(_u_rows(1, [2.0, 1.5, 2.2]))
    s = dif.bin_summary(dif.assign_bins(df))
    fig = ch.u_shape_figure(s, {1: "<script>alert(1)</script>"}, "bits", "topk_renorm", "thinking")
    assert fig.layout.yaxis.title.text == "mean H [thinking] (bits, topk_renorm)"
    assert fig.data[0].name == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert fig.data[0].y[0] == pytest.approx(s["mean_entropy"].iloc[0] / np.log(2))
    from analysis.early_stop import RunTokens, StopModel, StopRule
    rt = RunTokens(np.arange(2), [4, 4], np.array([1, 1, 0.1, 0.1, 2, 2, 2, 2.0]), [1, 0], [2, -1])
    m = StopModel(rt, StopRule("streaming", k=1, min_tokens=1))
    curves, points = {"held-out": m.curve()}, {"held-out": {**m.point(0.5), "tau": 0.5}}
    t = ch.tradeoff_figure(curves, points, "nats", "full")
    assert "tokens saved" in t.layout.xaxis.title.text and "accuracy" in t.layout.yaxis.title.text
    th = ch.threshold_figure(curves, 0.5, {"τ_mean": 0.4}, "nats", "full")
    assert th.layout.xaxis.title.text == "threshold τ (nats, full)"
    sp = ch.stop_positions_figure([{"label": "<b>t</b>", "h": rt.h[:4], "running": rt.h[:4], "stop": 2}],
                                  0.5, "nats", "full", 1, 1)
    assert sp.layout.yaxis.title.text == "entropy (nats, full)" and sp.data[0].name == "&lt;b&gt;t&lt;/b&gt;"


def test_chart_module_does_not_import_streamlit():
    import subprocess
    import sys

    from tests.browser import ROOT
    code = ("import sys; import dashboard.charts_difficulty; "
            "assert 'streamlit' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_bin_edges_parse_with_commas_or_semicolons():
    assert dif.parse_edges("0, 0.5, 1") == dif.parse_edges("0; 0.5; 1") == (0.0, 0.5, 1.0)
    assert dif.parse_edges("") is None and dif.parse_edges(None) is None and dif.parse_edges(" , ") is None
    with pytest.raises(DifficultyError, match="'x' is not a number"):
        dif.parse_edges("0, x, 1")
    with pytest.raises(DifficultyError, match="'nan' is not a number"):
        dif.parse_edges("0;nan")
    assert dif.parse_labels("hard; easy") == ("hard", "easy") and dif.parse_labels("") is None


def test_pass_rate_with_one_sample_per_problem_is_refused(tmp_path, capsys):
    from analysis.cli import main
    from analysis.store import Store
    from tests.difficulty_data import graded_traces

    df = _frame([(1, f"p{i}", None, ok, 1.0, 5) for i, ok in enumerate([True, False, True])])
    with pytest.raises(DifficultyError, match="pass rates need several graded samples per problem"):
        dif.assign_bins(df, Binning("pass_rate"))
    # one problem with two samples is enough to bin (the others: pass rate 0 or 1)
    two = _frame([(1, "p0", None, True, 1.0, 5), (1, "p0", None, False, 1.0, 5), (1, "p1", None, True, 1.0, 5)])
    assert dif.assign_bins(two, Binning("pass_rate"))["bin"].notna().all()
    store = Store(tmp_path / "one.duckdb")
    rid = store.create_run("one sample", "test", "tiny-llama")
    store.add_traces(rid, graded_traces(samples=1))
    code = main(["--store", str(store.path), "difficulty", str(rid), "--axis", "pass_rate"])
    err = capsys.readouterr().err
    assert code == 2 and "pass rates need several graded samples per problem" in err and "nan" not in err


def test_difficulty_page_refuses_a_pass_rate_of_one_sample(tmp_path):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from analysis.store import Store
    from tests.difficulty_data import graded_traces

    store = Store(tmp_path / "one.duckdb")
    rid = store.create_run("one sample", "test", "tiny-llama")
    store.add_traces(rid, graded_traces(samples=1))
    store.finish_run(rid)
    page = Path(__file__).resolve().parent.parent / "dashboard" / "views" / "difficulty.py"
    at = AppTest.from_file(str(page), default_timeout=60)
    at.session_state["store.path"] = str(store.path)
    at.run()
    assert not at.exception and not at.error
    at.radio(key="difficulty.axis").set_value("pass_rate").run()
    assert not at.exception
    assert len(at.error) == 1 and "pass rates need several graded samples per problem" in at.error[0].value
    assert not any("nan" in m.value for m in at.metric)


def test_cli_difficulty_has_the_pages_options(tmp_path, capsys):
    from analysis.cli import main
    from tests.difficulty_data import make_graded_store

    s = str(make_graded_store(tmp_path / "s.duckdb", runs=1).path)
    assert main(["--store", s, "difficulty", "1", "--edges", "1; 3; 5", "--labels", "low; high",
                 "--easy", "low", "--medium", "high"]) == 0
    out = capsys.readouterr().out
    assert "low -> high entropy change" in out and "[1, 3)" not in out
    assert main(["--store", s, "difficulty", "1", "--axis", "pass_rate", "--min-samples", "3"]) == 0
    assert "easy" in capsys.readouterr().out
    assert main(["--store", s, "difficulty", "1", "--easy", "nope"]) == 2
    assert "--easy 'nope': run 1 has no such bin" in capsys.readouterr().err
