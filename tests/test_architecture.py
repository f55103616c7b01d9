"""The project's seams: the engine never imports the UI (each analysis module, imported alone
in a fresh interpreter, leaves streamlit and plotly unloaded); only the store
(``analysis/store/``) speaks SQL to the store's tables or holds a DuckDB connection; no two
modules of the engine import each other, directly or round a cycle (imports inside functions
included), and the layers in pyproject.toml hold (import-linter)."""

from __future__ import annotations

import ast
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import analysis
from analysis.store.schema import SCHEMA
from tests.browser import ROOT


def analysis_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(analysis.__path__, "analysis."))


def test_every_analysis_module_imports_without_ui():
    mods = analysis_modules()
    assert "analysis.metrics" in mods and "analysis.store" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "    bad = [u for u in ('streamlit', 'plotly') if u in sys.modules]\n"
        "    assert not bad, f'{m} imported {bad}'\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_chart_builders_do_not_import_streamlit():
    code = ("import sys; import dashboard.charts; "
            "assert 'streamlit' not in sys.modules, 'dashboard.charts imported streamlit'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


# --------------------------------------------------------------------------- SQL stays in the store

#: the store's tables and macros, as the schema creates them
STORE_TABLES = sorted(set(re.findall(r"CREATE (?:TABLE|OR REPLACE MACRO)(?: IF NOT EXISTS)? (\w+)", SCHEMA)))
_TABLE = "|".join(STORE_TABLES)
#: a statement that reads or writes one of those tables (any case; after FROM, JOIN, INTO,
#: UPDATE, TABLE, or a macro call)
SQL_ON_TABLES = re.compile(
    rf"\b(?:from|join|into|update|table)\s+(?:{_TABLE})\b|\b(?:{_TABLE})\s*\(\s*[$?\w]"
    rf"|\bselect\b[\s\S]*\bfrom\b|\b(?:insert\s+into|delete\s+from|create\s+table|alter\s+table)\b",
    re.I)
#: words that make a string SQL rather than prose: a statement keyword in capitals, or a
#: lower-case statement with its clause
SQL_STATEMENT = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|WITH|ATTACH|COPY|PRAGMA|SET)\b"
                           r"|\bselect\b[\s\S]+\bfrom\b|\b(?:insert into|delete from|update \w+ set)\b")
DB_MODULES = {"duckdb", "sqlite3", "sqlalchemy", "adbc_driver_manager"}
#: what opens or reaches a connection: the store's own context manager and engine
CONNECTION_ATTRS = {"connect", "_engine", "cursor"}


def _text(node: ast.AST) -> str | None:
    """The text of a string literal, f-string (a placeholder for each value) or sum of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None or right is not None:
            return (left or " x ") + (right or " x ")
    return None


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def is_sql(text: str) -> bool:
    """Whether a string is SQL against the store's tables (not prose that mentions them)."""
    return bool(SQL_STATEMENT.search(text)) and bool(SQL_ON_TABLES.search(text))


def findings(source: str, name: str) -> list[str]:
    """``name:line: what`` for each SQL string, database import and connection use in ``source``."""
    tree = ast.parse(source, name)
    docs = _docstrings(tree)
    parts: set[int] = set()  # literals inside a larger string expression, reported with it
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"{name}:{node.lineno}: imports {a.name}" for a in node.names
                    if a.name.split(".")[0] in DB_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DB_MODULES:
            out.append(f"{name}:{node.lineno}: imports from {node.module}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in CONNECTION_ATTRS):
            out.append(f"{name}:{node.lineno}: calls .{node.func.attr}()")
        elif isinstance(node, ast.Attribute) and node.attr in ("_con", "_engine"):
            out.append(f"{name}:{node.lineno}: reaches .{node.attr}")
        elif isinstance(node, (ast.Constant, ast.JoinedStr, ast.BinOp)) and id(node) not in docs | parts:
            text = _text(node)
            if text is None:
                continue
            parts.update(id(n) for n in ast.walk(node) if n is not node)
            if is_sql(text):
                out.append(f"{name}:{node.lineno}: SQL {' '.join(text.split())[:70]!r}")
    return sorted(set(out), key=lambda s: int(s.split(":")[1]))


def project_sources() -> list[Path]:
    """The engine's and the dashboard's modules outside the store (the benchmarks compare the
    store with DuckDB used directly, and the tests read stores as they like)."""
    store = ROOT / "analysis" / "store"
    return [p for d in ("analysis", "dashboard") for p in sorted((ROOT / d).rglob("*.py"))
            if store not in p.parents]


def test_no_sql_or_database_connection_outside_the_store():
    sources = project_sources()
    assert len(sources) > 30 and ROOT / "analysis" / "formats" / "ingest.py" in sources
    found = [f for p in sources for f in findings(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert found == [], "SQL or a database connection outside analysis/store/ (add a Store verb):\n" + \
        "\n".join(found)


def test_the_scan_finds_what_the_code_outside_the_store_once_did():
    """Lines as they were in export.py, ingest.py, early_stop.py, grading.py, cli.py and
    dashboard/state.py before the store had verbs for them: each is found; prose that names
    the tables is not."""
    found = findings('''
import duckdb
def f(store, run_id, cols, ids, con, digest):
    """Select the tokens from traces of a run: one row per token, joined with the vocab."""
    import duckdb as db
    from duckdb import ConstraintException
    runs = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    df = store.query(f"""
        SELECT t.idx AS trace_idx, {cols}, k.pos
        FROM traces t JOIN tokens k USING (trace_id) WHERE t.run_id = ?""", [run_id])
    df = store.query("SELECT trace_id, coalesce(c.completion, '') AS completion, gold_answer "
                     "FROM traces LEFT JOIN completions($1) c USING (trace_id) WHERE run_id = $1", [run_id])
    sql = "select token_id, text from vocab where run_id = ?"
    with store.connect() as c:
        c.execute("INSERT INTO runs (run_id, name) VALUES (?, ?)", [1, "x"])
    label = "Select a run from the list: its traces and tokens"
    help_text = "Delete the run from the store, with its traces"
''', "old.py")
    lines = sorted({int(f.split(":")[1]) for f in found})
    assert lines == [2, 5, 6, 7, 8, 11, 13, 14, 15], found
    assert any("imports duckdb" in f for f in found) and any("calls .connect()" in f for f in found)
    assert {"runs", "traces", "tokens", "vocab", "token_layers", "completions"} <= set(STORE_TABLES)


# --------------------------------------------------------------------------- no import cycles


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str = "analysis") -> dict[str, set[str]]:
    """Module -> the project's modules it imports, wherever in it (function-level imports
    too); ``from package import name`` counts as importing the submodule when there is one."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_the_engine():
    graph = import_graph(ROOT)
    assert {"analysis.formats.thinkscope", "analysis.formats.detect"} <= graph["analysis.formats.ingest"]
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_cycles_through_function_level_imports(tmp_path):
    """The own format's old shape: export imported the readers inside a function, and the
    table reader imported export at the top."""
    pkg = tmp_path / "analysis"
    (pkg / "formats").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "export.py").write_text("def read_export(p):\n    from .formats.detect import detect\n")
    (pkg / "formats" / "__init__.py").write_text("from .detect import detect\n")
    (pkg / "formats" / "detect.py").write_text("from . import tables\n")
    (pkg / "formats" / "tables.py").write_text("from ..export import LAYER_COLUMNS\n")
    (pkg / "metrics.py").write_text("import numpy\n")
    assert import_cycles(import_graph(tmp_path)) == [
        ["analysis.export", "analysis.formats.detect", "analysis.formats.tables"]]


def test_the_layers_of_pyproject_hold():
    from importlinter.cli import lint_imports
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0
