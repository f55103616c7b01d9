"""Answer extraction and grading: a correctness flag per trace, and re-grading a stored run.

Extraction finds the model's final answer in a completion by one rule, or by trying the
rules in order (``auto``): ``\\boxed{...}`` (MATH), ``#### x`` (GSM8K), "Final answer:",
"Answer:", "the answer is", then the last number. Matching is numeric with a tolerance when
the gold answer is a number (integers, decimals, thousands separators, fractions ``3/4``,
LaTeX ``\\frac{3}{4}``, ``50\\%``, ``$12``), by letter for multiple choice (gold ``A``..``J``),
and by normalised text otherwise.

An answer that cannot be extracted (or a trace with no gold answer) is *ungraded*
(``correct = None``), never wrong: counting it as wrong would make a formatting failure look
like a reasoning failure, which biases every accuracy-vs-entropy figure.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import pandas as pd

from . import metrics
from .errors import GradingError

#: extraction rules, in the order ``auto`` tries them
RULES = ("boxed", "hash", "final_answer", "answer", "the_answer_is", "last_number")
RULE_NAMES = {
    "auto": "try each rule in order",
    "boxed": r"last \boxed{...} (MATH)",
    "hash": "after the last '####' (GSM8K)",
    "final_answer": "after the last 'Final answer:'",
    "answer": "after the last 'Answer:'",
    "the_answer_is": "after the last 'the answer is'",
    "last_number": "the last number in the completion",
    "regex": "a user regular expression (group 1, else the whole match)",
}
CHOICE_LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class GradingRule:
    """How answers are extracted and compared; stored with a run when it is (re-)graded.

    ``rel_tol``/``abs_tol`` are the numeric tolerance (``math.isclose``): relative, and absolute
    in the answer's own unit.
    """

    method: str = "auto"
    regex: str | None = None
    rel_tol: float = 1e-6
    abs_tol: float = 1e-9

    def __post_init__(self) -> None:
        if self.method not in RULE_NAMES:
            raise GradingError(f"unknown grading rule {self.method!r}; use one of {', '.join(RULE_NAMES)}")
        if self.method == "regex":
            if not self.regex:
                raise GradingError("grading rule 'regex' needs a regular expression (--regex)")
            try:
                re.compile(self.regex)
            except re.error as e:
                raise GradingError(f"bad regular expression {self.regex!r}: {e}") from None
        if self.rel_tol < 0 or self.abs_tol < 0:
            raise GradingError(f"tolerances must be >= 0, got rel {self.rel_tol}, abs {self.abs_tol}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Grade:
    """The extracted answer (None: nothing found), the rule that found it, and the verdict
    (True/False, or None for ungraded)."""

    pred: str | None
    method: str | None
    correct: bool | None


# --------------------------------------------------------------------------- numbers

_NUM = r"[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-−]?\.\d+"
_FRAC_LATEX = re.compile(r"([-−]?)\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}|"
                         r"([-−]?)\\[dt]?frac\s*(\d)\s*(\d)")
_NUMBER_RE = re.compile(
    rf"(?<![\w.])(?:{_NUM})(?:\s*/\s*(?:\d+(?:\.\d+)?))?(?:[eE][-+]?\d+)?\s*(?:\\?%)?")
_LATEX_NOISE = re.compile(r"\\(?:left|right|!|,|;|:|\s|displaystyle)|\\text\{[^{}]*\}|\\mathrm\{[^{}]*\}|"
                          r"\\(?:dollar|\$)|\{,\}")


def _delatex(s: str) -> str:
    """Simple LaTeX numbers to plain text: \\frac{a}{b} -> a/b, drop \\left, \\text{..}, $ ..."""
    s = _FRAC_LATEX.sub(lambda m: (f"{m[1]}({m[2]})/({m[3]})" if m[2] is not None
                                   else f"{m[4]}{m[5]}/{m[6]}"), s)
    s = _LATEX_NOISE.sub("", s)
    return s.replace("\\%", "%").replace("$", "").replace("−", "-").replace("{", "").replace("}", "")


def parse_number(text: str | None) -> float | None:
    """The value of a string that *is* one number (possibly LaTeX), else None.

    Accepts ``-1,234.5``, ``$12``, ``3/4``, ``\\frac{3}{4}``, ``-\\dfrac12``, ``50%``, ``2.5e3``,
    with surrounding blanks, a trailing period and a ``\\text{unit}``.
    """
    if text is None:
        return None
    s = _delatex(str(text)).strip().rstrip(".").strip()
    s = re.sub(r"^\((-?[\d.,/ ]+)\)$", r"\1", s)
    m = re.fullmatch(r"(-?)\(?\s*(-?[\d.,]+)\s*\)?\s*/\s*\(?\s*(-?[\d.,]+)\s*\)?", s)
    if m:
        a, b = _plain(m[2]), _plain(m[3])
        if a is None or b is None or b == 0:
            return None
        v = a / b
        return -v if m[1] else v
    return _plain(s.rstrip("%").strip())


def _plain(s: str) -> float | None:
    s = s.strip().replace("$", "").strip()
    if re.fullmatch(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+", s):
        return float(s.replace(",", ""))
    return None


def numbers_in(text: str) -> list[str]:
    """Every number-like substring of ``text`` (LaTeX fractions made plain first), in order."""
    s = _delatex(text)
    return [m.group(0).strip() for m in _NUMBER_RE.finditer(s)]


# --------------------------------------------------------------------------- extraction

_CUES = {
    # a colon or "is" must follow: "write a final answer in the correct format" is no answer
    "final_answer": re.compile(r"final\s+answer\s*(?:is\b\s*[:：]?|[:：])", re.I),
    "answer": re.compile(r"(?<![\w])(?<!final )(?<!Final )(?<!FINAL )answer\s*[:：]", re.I),
    "the_answer_is": re.compile(r"the\s+(?:final\s+)?answer\s+is\s*[:：]?", re.I),
    "hash": re.compile(r"####"),
}


_SPECIAL = re.compile(r"<\|[^<>|\s]{1,40}\|>")


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...}, braces balanced."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i = starts[-1]
    depth, j = 1, i
    while j < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        j += 1
    return text[i: j - 1].strip() if depth == 0 else None


def _after_cue(text: str, cue: re.Pattern) -> str | None:
    """The rest of the line after the last occurrence of ``cue`` (or the next line when
    the cue ends its line), trimmed; None when the cue is absent or nothing follows."""
    hits = list(cue.finditer(text))
    if not hits:
        return None
    rest = text[hits[-1].end():]
    lines = [ln.strip() for ln in rest.split("\n")]
    seg = next((ln for ln in lines[:2] if ln), "")
    seg = seg.strip().strip("*").strip()
    return seg[:200] or None


def extract_raw(text: str, rule: GradingRule) -> tuple[str | None, str | None]:
    """(raw answer text, rule that found it) under ``rule``; (None, None) when nothing is found."""
    text = _SPECIAL.sub("", text or "")  # chat-template tokens such as <|im_end|> are not answers
    if rule.method == "regex":
        hits = list(re.finditer(rule.regex, text))
        if not hits:
            return None, None
        m = hits[-1]
        got = m.group(1) if m.re.groups else m.group(0)
        return (got.strip() or None), "regex"
    methods = RULES if rule.method == "auto" else (rule.method,)
    for meth in methods:
        if meth == "boxed":
            raw = _boxed(text)
        elif meth == "last_number":
            nums = numbers_in(text)
            raw = nums[-1] if nums else None
        else:
            raw = _after_cue(text, _CUES[meth])
        if raw:
            return raw, meth
    return None, None


def _choice(raw: str) -> str | None:
    """A multiple-choice letter from an answer segment: '(B)', 'B)', 'B.', 'B', 'option B'."""
    m = re.match(r"^\s*(?:option\s+|choice\s+)?\(?([A-J])\)?(?:[.):\s]|$)", raw)
    if m:
        return m.group(1)
    m = re.search(r"\(([A-J])\)", raw)
    return m.group(1) if m else None


def is_choice(gold: str | None) -> bool:
    return gold is not None and re.fullmatch(r"\(?[A-J]\)?", gold.strip()) is not None


def normalise_text(s: str) -> str:
    """Text answers compared after dropping LaTeX spacing/markup, blanks, case and a final period."""
    s = _LATEX_NOISE.sub("", s)
    s = s.replace("$", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def grade(text: str, gold: str | None, rule: GradingRule = GradingRule()) -> Grade:
    """Extract the answer from ``text`` and compare it with ``gold``.

    ``correct`` is None (ungraded) when there is no gold answer or when nothing comparable
    can be extracted (no number for a numeric gold, no letter for multiple choice).
    """
    raw, meth = extract_raw(text, rule)
    if raw is None:
        return Grade(None, None, None)
    if gold is None or str(gold).strip() == "":
        return Grade(raw, meth, None)
    gold = str(gold).strip()
    if is_choice(gold):
        letter = _choice(raw)
        want = gold.strip("() ")
        return Grade(letter or raw, meth, None if letter is None else letter == want)
    g = parse_number(gold)
    if g is not None:
        p = parse_number(raw)
        pred = raw
        if p is None:  # "19 apples": the first number; "3 + 1 = 4": the first after the last '='
            nums = numbers_in(raw.rsplit("=", 1)[1] if "=" in raw else raw) or numbers_in(raw)
            p = parse_number(nums[0]) if nums else None
            pred = nums[0] if nums else raw
        if p is None:
            return Grade(raw, meth, None)
        return Grade(pred, meth, math.isclose(p, g, rel_tol=rule.rel_tol, abs_tol=rule.abs_tol))
    return Grade(raw, meth, normalise_text(raw) == normalise_text(gold))


def grade_traces(traces: Iterable, rule: GradingRule = GradingRule()) -> None:
    """Grade traces in place: metadata['pred_answer'], ['correct'] (None: ungraded) and
    ['grade_method'] from each trace's completion and metadata['gold_answer']."""
    for t in traces:
        g = grade(t.completion, t.metadata.get("gold_answer"), rule)
        t.metadata["pred_answer"] = g.pred
        t.metadata["correct"] = g.correct
        t.metadata["grade_method"] = g.method


def grade_frame(df: pd.DataFrame, rule: GradingRule = GradingRule()) -> pd.DataFrame:
    """Grades for a frame with columns trace_id, completion, gold_answer: trace_id,
    pred_answer, correct (object dtype: True/False/None)."""
    rows = [grade(c if isinstance(c, str) else "", g if isinstance(g, str) else None, rule)
            for c, g in zip(df["completion"], df["gold_answer"])]
    return pd.DataFrame({"trace_id": df["trace_id"].to_numpy(),
                         "pred_answer": [r.pred for r in rows],
                         "correct": pd.array([r.correct for r in rows], dtype="boolean")})


def regrade_run(store, run_id: int, rule: GradingRule = GradingRule()) -> dict:
    """Re-grade every trace of a stored run with ``rule`` and write the grades back in one
    transaction. Returns counts: n, correct, wrong, ungraded."""
    df = store.completions(run_id)[["trace_id", "completion", "gold_answer"]]
    if df.empty:
        raise GradingError(f"run {run_id} has no traces to grade")
    grades = grade_frame(df, rule)
    store.set_grades(int(run_id), grades, rule.to_dict())
    return summarise(grades["correct"])


def summarise(correct: Sequence) -> dict:
    """Counts of correct / wrong / ungraded and the accuracy over graded traces."""
    s = pd.Series(pd.array(list(correct), dtype="boolean"))
    n_ok, n_graded = int((s == True).sum()), int(s.notna().sum())  # noqa: E712
    return {"n": len(s), "correct": n_ok, "wrong": n_graded - n_ok, "ungraded": len(s) - n_graded,
            "accuracy": n_ok / n_graded if n_graded else float("nan")}


def pass_rates(df: pd.DataFrame, by: str = "level") -> pd.DataFrame:
    """Pass rate per ``by`` value over graded traces: columns by, n, graded, correct, pass_rate."""
    return metrics.pass_rates(df, by).rename(columns={"samples": "n"})
