"""Problem sets: the bundled generated arithmetic/word problems, and reading prompt files.

A problem has an id, a question, a gold answer and a difficulty level. Prompt files
(.txt one prompt a line, .jsonl, .json, .csv) become ``Prompt`` objects whose metadata
carries the problem fields into the traces.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from .record import Prompt
from .trace import TraceError

#: appended to every bundled question; the demo runs split thinking/answer on it
ANSWER_CUE = "Final answer:"
INSTRUCTION = f"Think step by step, then write '{ANSWER_CUE}' followed by the number."

QUESTION_FIELDS = ("prompt", "question", "problem", "text", "input")
ANSWER_FIELDS = ("gold_answer", "answer", "gold", "solution", "target")
ID_FIELDS = ("id", "problem_id", "qid", "uid")
LEVEL_FIELDS = ("level", "difficulty")


@dataclass
class Problem:
    problem_id: str
    question: str
    gold_answer: str | None = None
    level: float | None = None

    def to_prompt(self, instruction: str | None = INSTRUCTION) -> Prompt:
        text = f"{self.question}\n{instruction}" if instruction else self.question
        meta = {"problem_id": self.problem_id, "question": self.question}
        if self.gold_answer is not None:
            meta["gold_answer"] = self.gold_answer
        if self.level is not None:
            meta["level"] = self.level
        return Prompt(text, meta)


NAMES = ["Tom", "Ana", "Ravi", "Mia", "Kenji", "Lena", "Omar", "Sara"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "coins", "cards"]


def _make(level: int, rng: random.Random) -> tuple[str, int]:
    """One question of ``level`` (1 easiest .. 6 hardest) and its integer answer."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if level == 1:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"What is {a} + {b}?", a + b
    if level == 2:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", a + b
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", a - b
    if level == 3:
        a, b, c = rng.randint(3, 20), rng.randint(2, 15), rng.randint(2, 9)
        return f"{name} has {a} {item}, buys {b} more, then gives away {c}. How many {item} does {name} have now?", a + b - c
    if level == 4:
        a, b = rng.randint(12, 99), rng.randint(3, 9)
        return f"What is {a} * {b}?", a * b
    if level == 5:
        boxes, per, eaten = rng.randint(3, 9), rng.randint(4, 12), rng.randint(2, 10)
        return (f"{name} buys {boxes} boxes of {item} with {per} {item} in each box and loses {eaten} of them. "
                f"How many {item} are left?"), boxes * per - eaten
    a, b, c = rng.randint(101, 999), rng.randint(11, 99), rng.randint(10, 99)
    return f"What is {a} * {b} - {c}?", a * b - c


def generate_problem_set(per_level: int = 10, levels=range(1, 7), seed: int = 0) -> list[Problem]:
    """A reproducible set of arithmetic and word problems, ``per_level`` at each level."""
    rng = random.Random(seed)
    out = []
    for level in levels:
        for i in range(per_level):
            q, a = _make(int(level), rng)
            out.append(Problem(f"L{level}-{i:03d}", q, str(a), float(level)))
    return out


# --------------------------------------------------------------------------- reading files


def _pick(row: dict, names: tuple[str, ...]):
    for n in names:
        if n in row and row[n] not in (None, ""):
            return row[n]
    return None


def _row_to_problem(row: dict, where: str, idx: int) -> Problem:
    if not isinstance(row, dict):
        raise TraceError(f"{where}: expected an object with a 'prompt' or 'question' field, "
                         f"got {type(row).__name__}")
    q = _pick(row, QUESTION_FIELDS)
    if not isinstance(q, str) or not q.strip():
        raise TraceError(f"{where}: no prompt text; expected one of the fields "
                         f"{', '.join(QUESTION_FIELDS)}")
    level = _pick(row, LEVEL_FIELDS)
    if level is not None:
        try:
            level = float(level)
        except (TypeError, ValueError):
            raise TraceError(f"{where}: field 'level' is {level!r}, expected a number") from None
    pid = _pick(row, ID_FIELDS)
    gold = _pick(row, ANSWER_FIELDS)
    return Problem(str(pid) if pid is not None else f"p{idx:05d}", q,
                   None if gold is None else str(gold), level)


def read_problems(path: str | Path) -> list[Problem]:
    """Problems or prompts from a .txt, .jsonl, .json or .csv file.

    Errors name the file and line (or record) and what is wrong.
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such prompt file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{p.name}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise TraceError(f"{p.name}: the file is empty")
    out: list[Problem] = []
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"{p.name} line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            out.append(_row_to_problem(row, f"{p.name} line {lineno}", len(out)))
    elif suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{p.name} line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise TraceError(f"{p.name}: expected a JSON array of prompts")
        for i, row in enumerate(rows):
            if isinstance(row, str):
                row = {"prompt": row}
            out.append(_row_to_problem(row, f"{p.name} record {i}", i))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for i, row in enumerate(reader):
            out.append(_row_to_problem(row, f"{p.name} line {i + 2}", i))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                out.append(Problem(f"p{len(out):05d}", line.strip()))
    if not out:
        raise TraceError(f"{p.name}: no prompts found")
    seen: dict[str, int] = {}
    for i, pr in enumerate(out):
        if pr.problem_id in seen:
            raise TraceError(f"{p.name}: duplicate id {pr.problem_id!r} (records {seen[pr.problem_id] + 1} and {i + 1})")
        seen[pr.problem_id] = i
    return out
