"""Answer extraction and grading edge cases; problem files; re-grading a stored run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import grading
from analysis.grading import GradingError, GradingRule, grade, parse_number
from analysis.problems import generate_problem_set, load_problem_set, read_problems
from analysis.trace import Trace, TraceError


@pytest.mark.parametrize("text,value", [
    ("19", 19.0), ("-1,234.5", -1234.5), ("$12.00", 12.0), ("3/4", 0.75), (r"\frac{3}{4}", 0.75),
    (r"-\dfrac12", -0.5), (r"\tfrac{1}{8}", 0.125), ("50%", 50.0), (r"50\%", 50.0), ("2.5e3", 2500.0),
    (" 7. ", 7.0), (r"12\text{ apples}", 12.0), (".5", 0.5), ("(3)/(4)", 0.75),
])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["seven", "", "1/0", "x^2", "1,23", None])
def test_parse_number_rejects(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("text,gold,method,correct", [
    ("12 + 7 = 19.\nFinal answer: 19", "19", "final_answer", True),
    ("Final answer: 20", "19", "final_answer", False),
    (r"so the result is \boxed{\frac{3}{4}}.", "0.75", "boxed", True),
    (r"\boxed{\frac{1}{2}} and later \boxed{2}", "2", "boxed", True),
    (r"\boxed{x^2 + 1}", "x^2+1", "boxed", True),
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72", "hash", True),
    ("#### 1,234", "1234", "hash", True),
    ("Answer: 50%", "50", "answer", True),
    ("The answer is (B).", "B", "the_answer_is", True),
    ("The answer is C", "(B)", "the_answer_is", False),
    ("so 3 + 5 = 8", "8", "last_number", True),
    ("Final answer: 19 apples", "19", "final_answer", True),
    ("Final answer: $0.10", "0.1", "final_answer", True),
    ("Final answer:\n42", "42", "final_answer", True),
    ("the final answer is 1,000,000", "1000000", "final_answer", True),
    ("Final answer: 3 + 1 = 4", "4", "final_answer", True),
    ("I will write a final answer in the correct format. 2 + 3 = 5", "5", "last_number", True),
    ("5 is the final answer to this question.", "5", "last_number", True),
    ("Final answer: 12 apples = 5 + 7", "12", "final_answer", False),
])
def test_grade(text, gold, method, correct):
    g = grade(text, gold)
    assert g.method == method
    assert g.correct is correct


@pytest.mark.parametrize("text,gold", [
    ("I do not know.", "5"),          # nothing to extract
    ("Final answer: seven", "7"),     # a cue but no number for a numeric gold
    ("The answer is the second one", "B"),  # no letter for multiple choice
    ("Final answer: 19", None),       # no gold answer
    ("", "3"),
])
def test_unextractable_is_ungraded_not_wrong(text, gold):
    assert grade(text, gold).correct is None


def test_tolerance():
    assert grade("Final answer: 3.1416", "3.14159").correct is False
    assert grade("Final answer: 3.1416", "3.14159", GradingRule(rel_tol=1e-3)).correct is True
    assert grade("Final answer: 0.3333", "1/3", GradingRule(abs_tol=1e-3)).correct is True
    assert grade("Final answer: 19.0", "19").correct is True


def test_single_rule_and_regex():
    text = "Answer: 3\nFinal answer: 4"
    assert grade(text, "3", GradingRule("answer")).correct is True
    assert grade(text, "4").correct is True  # auto prefers 'Final answer:'
    assert grade("result=[17] done", "17", GradingRule("regex", regex=r"result=\[(\d+)\]")).correct is True
    assert grade("no match", "17", GradingRule("regex", regex=r"result=(\d+)")).correct is None
    with pytest.raises(GradingError, match="bad regular expression"):
        GradingRule("regex", regex="(")
    with pytest.raises(GradingError, match="unknown grading rule"):
        GradingRule("nope")


def test_grade_traces_in_place():
    tr = Trace("q", ["Final", " answer", ":", " 8"], np.zeros(4), metadata={"gold_answer": "8"})
    un = Trace("q", ["no", " idea"], np.zeros(2), metadata={"gold_answer": "8"})
    grading.grade_traces([tr, un])
    assert tr.metadata["correct"] is True and tr.metadata["pred_answer"] == "8"
    assert un.metadata["correct"] is None and un.metadata["pred_answer"] is None


def test_summarise_counts_ungraded_apart():
    s = grading.summarise([True, False, None, True])
    assert s == {"n": 4, "correct": 2, "wrong": 1, "ungraded": 1, "accuracy": pytest.approx(2 / 3)}


def test_regrade_stored_run(store):
    traces = [Trace("q", list(text), np.zeros(len(text)), metadata={"gold_answer": gold, "problem_id": f"p{i}"})
              for i, (text, gold) in enumerate([("Answer: 5. Final answer: 6", "5"), ("x = 7", "7"), ("??", "1")])]
    grading.grade_traces(traces)
    run = store.create_run("r", "test")
    store.add_traces(run, traces)
    before = store.traces(run)["correct"].tolist()
    assert before[0] is False or before[0] == False  # noqa: E712 ('Final answer' wins under auto)
    counts = grading.regrade_run(store, run, GradingRule("answer"))
    after = store.traces(run)
    assert after["correct"].tolist()[0] == True  # noqa: E712
    assert after["pred_answer"].tolist()[0].startswith("5")
    assert counts["ungraded"] == 2  # 'x = 7' and '??' have no 'Answer:' under the single rule
    settings = json.loads(store.runs()["settings"].iloc[0])
    assert settings["grading"]["method"] == "answer"


# --------------------------------------------------------------------------- problem files


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_read_gsm8k_math_and_choice_shapes(tmp_path):
    p = _write(tmp_path, "mix.jsonl", "\n".join(json.dumps(r) for r in [
        {"question": "Natalia sold clips...", "answer": "She sold 48/2 = 24.\n#### 1,072"},
        {"problem": "Compute 1/2 + 1/4.", "solution": r"We get $\boxed{\frac{3}{4}}$.", "level": "Level 5"},
        {"id": "mc1", "question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
        {"id": "mc2", "question": "Capital?", "options": {"A": "Rome", "B": "Paris"}, "answer": "B"},
    ]))
    probs = read_problems(p, require_answers=True)
    assert probs[0].gold_answer == "1072"
    assert probs[1].gold_answer == r"\frac{3}{4}" and probs[1].level == 5.0
    assert probs[2].gold_answer == "B" and "B) 4" in probs[2].question
    assert probs[3].gold_answer == "B" and "A) Rome" in probs[3].question
    assert grade(r"... \boxed{0.75}", probs[1].gold_answer).correct is True


def test_read_csv_choice_columns(tmp_path):
    p = _write(tmp_path, "mc.csv", "id,question,A,B,C,D,answer\nq1,Pick,red,blue,green,gray,C\n")
    (pr,) = read_problems(p, require_answers=True)
    assert pr.gold_answer == "C" and "C) green" in pr.question


@pytest.mark.parametrize("text,name,msg", [
    ('{"id": "a", "question": "1+1?"}\n', "x.jsonl", "x.jsonl line 1: no gold answer"),
    ('{"id": "a", "question": "1+1?", "answer": "2"}\n{"id": "a", "question": "2+2?", "answer": "4"}\n',
     "x.jsonl", "x.jsonl line 2: duplicate id 'a' (first at line 1)"),
    ('{"id": "a", "question": "1+1?", "answer": "2", "level": "very"}\n', "x.jsonl",
     "x.jsonl line 1: field 'level' is 'very'"),
    ("id,question,answer,level\na,1+1?,2,1\nb,2+2?,,2\n", "x.csv", "x.csv line 3: no gold answer"),
    ("id,question,answer,level\na,1+1?,2,one\n", "x.csv", "x.csv line 2: field 'level'"),
    ('{"id": "a", "question": "?", "choices": ["x", "y"], "answer": 5}\n', "x.jsonl", "outside the 2 choices"),
])
def test_bad_problem_files(tmp_path, text, name, msg):
    with pytest.raises(TraceError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        read_problems(_write(tmp_path, name, text), require_answers=True)


def test_bundled_set_matches_generator():
    bundled = load_problem_set("arithmetic")
    from analysis.problems import BUNDLED_PER_LEVEL, BUNDLED_SEED
    fresh = generate_problem_set(per_level=BUNDLED_PER_LEVEL, seed=BUNDLED_SEED)
    assert [(p.problem_id, p.question, p.gold_answer, p.level) for p in bundled] == \
           [(p.problem_id, p.question, p.gold_answer, p.level) for p in fresh]
    assert len({p.level for p in bundled}) >= 5


def test_unknown_set_is_refused():
    with pytest.raises(TraceError, match="neither a problem file nor a bundled set"):
        load_problem_set("no-such-set")
