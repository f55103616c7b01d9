"""The engine never imports the UI: each analysis module, imported alone in a fresh
interpreter, leaves streamlit (and plotly) unloaded."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import analysis
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
