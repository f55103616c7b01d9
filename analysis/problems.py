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
ANSWER_FIELDS = ("gold_answer", "answer", "gold", "solution", "target", "label")
CHOICE_FIELDS = ("choices", "options")
#: the bundled sets live here as <name>.jsonl; `data/problems/make_problems.py` writes them
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "problems"
BUNDLED_SEED = 0
BUNDLED_PER_LEVEL = 16
LEVEL_WORDS = {"easy": 1.0, "medium": 2.0, "hard": 3.0}
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
    """One question of ``level`` (1 easiest .. 6 hardest) and its integer answer.

    Tuned on the embedded SmolLM2-135M-Instruct (T = 0.7) so that its pass rate falls from
    mostly right (level 1) to mostly wrong (levels 4-6); see data/problems/make_problems.py.
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if level == 1:
        a = rng.randint(2, 9)
        return f"What is {a} * 1?", a
    if level == 2:
        a, b = rng.randint(1, 4), rng.randint(1, 4)
        return f"What is {a} + {b}?", a + b
    if level == 3:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"What is {a} + {b}?", a + b
    if level == 4:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if rng.random() < 0.5:
            return f"What is {a} + {b}?", a + b
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", a - b
    if level == 5:
        a, b, c = rng.randint(3, 20), rng.randint(2, 15), rng.randint(2, 9)
        return f"{name} has {a} {item}, buys {b} more, then gives away {c}. How many {item} does {name} have now?", a + b - c
    boxes, per, lost = rng.randint(3, 9), rng.randint(4, 12), rng.randint(2, 10)
    return (f"{name} buys {boxes} boxes of {item} with {per} {item} in each box and loses {lost} of them. "
            f"How many {item} are left?"), boxes * per - lost


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


def _gold_from_text(gold: str) -> str:
    """The final answer inside a worked solution: GSM8K's '#### 72', MATH's last \\boxed{...}."""
    if "####" in gold:
        return gold.rsplit("####", 1)[1].strip().replace(",", "")
    if "\\boxed" in gold or "\\fbox" in gold:
        from .grading import _boxed
        boxed = _boxed(gold)
        if boxed:
            return boxed
    return gold.strip()


def _parse_level(level, where: str) -> float | None:
    """A number, 'Level 5' (MATH), or easy/medium/hard (1/2/3)."""
    if level is None:
        return None
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return float(level)
    text = str(level).strip()
    if text.lower() in LEVEL_WORDS:
        return LEVEL_WORDS[text.lower()]
    import re
    m = re.fullmatch(r"(?:level\s*)?([-+]?\d+(?:\.\d+)?)", text, re.I)
    if not m:
        raise TraceError(f"{where}: field 'level' is {level!r}, expected a number, 'Level N' "
                         f"or one of {', '.join(LEVEL_WORDS)}")
    return float(m.group(1))


def _choices(row: dict, where: str) -> list[str] | None:
    """Multiple-choice options from a list/dict field or from columns A, B, C, D ..."""
    raw = _pick(row, CHOICE_FIELDS)
    if isinstance(raw, str) and raw.strip().startswith(("[", "{")):
        from .formats.jsonstream import loads  # depth-checked, like every reader's JSON
        try:
            raw = loads(raw)
        except ValueError:
            raise TraceError(f"{where}: field 'choices' is not a JSON list") from None
    if isinstance(raw, dict):
        return [str(raw[k]) for k in sorted(raw)]
    if isinstance(raw, list):
        return [str(c["text"] if isinstance(c, dict) and "text" in c else c) for c in raw]
    if raw is not None:
        raise TraceError(f"{where}: field 'choices' must be a list of options, got {type(raw).__name__}")
    cols = [c for c in "ABCDEFGHIJ" if row.get(c) not in (None, "")]
    return [str(row[c]) for c in cols] if len(cols) >= 2 else None


def _row_to_problem(row: dict, where: str, idx: int, require_answer: bool = False) -> Problem:
    if not isinstance(row, dict):
        raise TraceError(f"{where}: expected an object with a 'prompt' or 'question' field, "
                         f"got {type(row).__name__}")
    q = _pick(row, QUESTION_FIELDS)
    if not isinstance(q, str) or not q.strip():
        raise TraceError(f"{where}: no prompt text; expected one of the fields "
                         f"{', '.join(QUESTION_FIELDS)}")
    level = _parse_level(_pick(row, LEVEL_FIELDS), where)
    pid = _pick(row, ID_FIELDS)
    gold = _pick(row, ANSWER_FIELDS)
    choices = _choices(row, where)
    if choices:
        letters = "ABCDEFGHIJ"[: len(choices)]
        q = q.rstrip() + "\n" + "\n".join(f"{l}) {c}" for l, c in zip(letters, choices))
        if isinstance(gold, int) or (isinstance(gold, str) and gold.strip().isdigit()):
            i = int(gold)  # an index into the options (MMLU's 0-based answer)
            if not 0 <= i < len(choices):
                raise TraceError(f"{where}: answer index {i} is outside the {len(choices)} choices")
            gold = letters[i]
        elif isinstance(gold, str) and gold.strip() in choices and gold.strip() not in letters:
            gold = letters[choices.index(gold.strip())]
    if gold is not None:
        gold = _gold_from_text(str(gold))
    if require_answer and not gold:
        raise TraceError(f"{where}: no gold answer; expected one of the fields {', '.join(ANSWER_FIELDS)}")
    return Problem(str(pid) if pid is not None else f"p{idx:05d}", q, gold or None, level)


def read_problems(path: str | Path, require_answers: bool = False) -> list[Problem]:
    """Problems or prompts from a .txt, .jsonl, .json or .csv file.

    Rows may have the shapes of GSM8K (answer '... #### 72'), MATH (solution with \\boxed{},
    level 'Level 5') or multiple choice (choices list/dict or columns A..D; answer a letter,
    an index or the option text). Errors name the file and line (or record) and what is
    wrong; with ``require_answers`` a row without a gold answer is an error.
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
    where_of: list[str] = []
    suffix = p.suffix.lower()
    ra = require_answers
    from .formats.jsonstream import loads  # depth-checked, like every reader's JSON
    if suffix in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = loads(line)
            except json.JSONDecodeError as e:
                raise TraceError(f"{p.name} line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            except ValueError as e:  # nested too deep, or a number Python will not convert
                raise TraceError(f"{p.name} line {lineno}: {e}") from None
            where_of.append(f"line {lineno}")
            out.append(_row_to_problem(row, f"{p.name} line {lineno}", len(out), ra))
    elif suffix == ".json":
        try:
            rows = loads(text)
        except json.JSONDecodeError as e:
            raise TraceError(f"{p.name} line {e.lineno}: invalid JSON ({e.msg})") from None
        except ValueError as e:
            raise TraceError(f"{p.name}: {e}") from None
        if not isinstance(rows, list):
            raise TraceError(f"{p.name}: expected a JSON array of prompts")
        for i, row in enumerate(rows):
            if isinstance(row, str):
                row = {"prompt": row}
            where_of.append(f"record {i}")
            out.append(_row_to_problem(row, f"{p.name} record {i}", i, ra))
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        for i, row in enumerate(reader):
            where_of.append(f"line {i + 2}")
            out.append(_row_to_problem(row, f"{p.name} line {i + 2}", i, ra))
    else:
        if ra:
            raise TraceError(f"{p.name}: a plain-text file has no gold answers; use JSONL or CSV "
                             "with id, question, answer (and optionally level)")
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                where_of.append(f"line {lineno}")
                out.append(Problem(f"p{len(out):05d}", line.strip()))
    if not out:
        raise TraceError(f"{p.name}: no prompts found")
    seen: dict[str, int] = {}
    for i, pr in enumerate(out):
        if pr.problem_id in seen:
            raise TraceError(f"{p.name} {where_of[i]}: duplicate id {pr.problem_id!r} "
                             f"(first at {where_of[seen[pr.problem_id]]})")
        seen[pr.problem_id] = i
    return out


def write_problems(problems: list[Problem], path: str | Path) -> Path:
    """Write problems as JSONL (id, question, answer, level), readable by ``read_problems``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for pr in problems:
            f.write(json.dumps({"id": pr.problem_id, "question": pr.question,
                                "answer": pr.gold_answer, "level": pr.level}) + "\n")
    return p


def bundled_sets() -> list[str]:
    """Names of the problem sets bundled under data/problems/."""
    return sorted(f.stem for f in BUNDLED_DIR.glob("*.jsonl"))


def load_problem_set(name_or_path: str) -> list[Problem]:
    """A bundled set by name (``arithmetic``) or a problem file; every problem needs a gold answer."""
    p = Path(name_or_path).expanduser()
    if not p.exists() and (BUNDLED_DIR / f"{name_or_path}.jsonl").exists():
        p = BUNDLED_DIR / f"{name_or_path}.jsonl"
    if not p.exists():
        raise TraceError(f"{name_or_path}: neither a problem file nor a bundled set "
                         f"(bundled: {', '.join(bundled_sets()) or 'none'})")
    return read_problems(p, require_answers=True)
