"""Settings in one place: every environment variable and generation default is defined in
analysis/settings.py, read through it, and documented in the README."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from analysis import settings
from analysis.errors import ThinkscopeError

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("analysis", "dashboard") for p in (ROOT / d).rglob("*.py"))


def _code(path: Path) -> str:
    """The file's text without comments and docstrings' prose lines (a rough cut: enough to
    find literals and calls)."""
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


#: modules that read a variable which is not a setting of the project
OTHER_VARIABLES = {"analysis/server/http.py": "an API key, from the variable the user names (--api-key-env)"}


def test_environment_is_read_only_in_settings():
    readers = {p.relative_to(ROOT).as_posix() for p in SOURCES
               if p.name != "settings.py" and re.search(r"os\.environ\.get|os\.getenv|os\.environ\[", _code(p))}
    assert readers <= set(OTHER_VARIABLES), readers - set(OTHER_VARIABLES)


def test_every_thinkscope_variable_is_a_setting_and_in_the_readme():
    names = {s.name for s in settings.ENVIRONMENT}
    mentioned = set()
    for p in SOURCES:
        mentioned |= set(re.findall(r"THINKSCOPE_[A-Z_]+", p.read_text()))
    assert mentioned <= names, mentioned - names
    readme = (ROOT / "README.md").read_text()
    assert [n for n in sorted(names) if f"| `{n}` |" not in readme] == []


def test_literals_defined_once():
    """The marker and the 'probability 0' sentinel are written only where they are defined."""
    marker = [p.relative_to(ROOT).as_posix() for p in SOURCES if '"</think>"' in _code(p)]
    assert marker == ["analysis/settings.py"]
    sentinel = [p.relative_to(ROOT).as_posix() for p in SOURCES if re.search(r"-9999(\.0)?\b", _code(p))]
    assert sentinel == ["analysis/metrics.py"]


def test_generation_defaults_agree():
    from analysis import cli
    from analysis.record import GenerationSettings

    g = GenerationSettings()
    assert (g.temperature, g.top_p, g.max_new_tokens, g.top_k, g.seed, g.batch_size, g.marker) == (
        settings.TEMPERATURE, settings.TOP_P, settings.MAX_NEW_TOKENS, settings.TOP_K, settings.SEED,
        settings.BATCH_SIZE, settings.THINK_MARKER)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["generate"])
    assert (a.temperature, a.top_p, a.max_tokens, a.top_k, a.seed, a.batch_size) == (
        g.temperature, g.top_p, g.max_new_tokens, g.top_k, g.seed, g.batch_size)
    page = (ROOT / "dashboard" / "views" / "generate.py").read_text()
    assert '"Max new tokens", 8, 4096, defaults.MAX_NEW_TOKENS' in page


def test_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(settings.MAX_UPLOAD_MB.name, "lots")
    with pytest.raises(ThinkscopeError, match="THINKSCOPE_MAX_UPLOAD_MB is 'lots'; expected a size in MB above 0"):
        settings.MAX_UPLOAD_MB.number()
    assert settings.MAX_UPLOAD_MB.number(lenient=True) == 2048
    monkeypatch.setenv(settings.MAX_UPLOAD_MB.name, " 12.5 ")
    assert settings.MAX_UPLOAD_MB.number() == 12.5
    monkeypatch.delenv(settings.MAX_UPLOAD_MB.name)
    assert settings.MAX_UPLOAD_MB.number() == 2048
