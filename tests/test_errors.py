"""One errors module: every error a user can see is defined in analysis/errors.py, derives
from ThinkscopeError, and is what the pages catch."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import analysis
from analysis import errors
from analysis.errors import ThinkscopeError

ROOT = Path(__file__).resolve().parent.parent


def _modules():
    for info in pkgutil.walk_packages(analysis.__path__, "analysis."):
        yield importlib.import_module(info.name)


def test_every_error_class_lives_in_errors():
    found = {}
    for mod in _modules():
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and not name.startswith("_") \
                    and name.endswith("Error") and obj.__module__.startswith("analysis."):
                found[f"{mod.__name__}.{name}"] = obj
    assert found, "no error classes found"
    elsewhere = sorted(k for k, c in found.items() if c.__module__ != "analysis.errors")
    assert elsewhere == []
    assert all(issubclass(c, ThinkscopeError) for c in found.values())


def test_modules_re_export_their_errors():
    """The names tests and callers import from the raising module are the errors module's."""
    from analysis import branch, difficulty, early_stop, grading, layers, models, settings, trace
    from analysis.formats import base, ingest
    from analysis.server import http
    from analysis.store import StoreError

    assert (branch.BranchError, http.ServerError) == (errors.BranchError, errors.ServerError)

    assert (trace.TraceError, base.IngestError, ingest.DuplicateFileError, StoreError, models.ModelLoadError,
            layers.LayerRecordingError, grading.GradingError, difficulty.DifficultyError,
            early_stop.EarlyStopError, settings.SettingError) == (
        errors.TraceError, errors.IngestError, errors.DuplicateFileError, errors.StoreError,
        errors.ModelLoadError, errors.LayerRecordingError, errors.GradingError, errors.DifficultyError,
        errors.EarlyStopError, errors.SettingError)
    # bad values a caller gave stay ValueErrors, so code written against them keeps working
    assert all(issubclass(c, ValueError) for c in (errors.TraceError, errors.GradingError,
                                                     errors.DifficultyError, errors.EarlyStopError))


def test_pages_catch_the_one_base_type():
    """No page catches one of the project's error types by name (nor a ValueError standing for
    one, with the real type in a comment): ThinkscopeError covers them all. A ValueError from
    parsing what the user typed (float('x')) is not one of ours and may be caught as it is."""
    ours = {n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, ThinkscopeError)}
    found = {}
    for p in sorted((ROOT / "dashboard" / "views").glob("*.py")):
        for line in p.read_text().splitlines():
            m = re.search(r"except\s*\(?([\w., ]+?)\)?\s*(?:as \w+)?:\s*(#.*)?$", line.strip())
            if not m:
                continue
            names = {n.strip().rsplit(".", 1)[-1] for n in m.group(1).split(",")}
            comment_names = set(re.findall(r"\b(\w+Error)\b", m.group(2) or ""))
            bad = (names & ours - {"ThinkscopeError"}) | ((comment_names & ours) if "ValueError" in names else set())
            if bad:
                found.setdefault(p.name, []).append(line.strip())
    assert found == {}
