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
    from analysis import difficulty, early_stop, grading, layers, models, settings, trace
    from analysis.formats import base, ingest
    from analysis.store import StoreError

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
    pages = sorted((ROOT / "dashboard" / "views").glob("*.py"))
    caught = {p.name: re.findall(r"except\s*\(?\s*([\w.]*Error)\b", p.read_text()) for p in pages}
    assert {k: v for k, v in caught.items() if set(v) - {"ThinkscopeError"}} == {}
