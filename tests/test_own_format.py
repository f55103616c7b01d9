"""The project's own format (analysis.formats.thinkscope) and reading files: each file's format is
detected once per import, preview or read-back, whatever path the file takes through the
readers, and not at all when the user names the format."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.formats import ingest_file, ingest_files, preview, thinkscope
from analysis.formats.ingest import import_export, read_export
from analysis.store import Store

FIX = Path(__file__).resolve().parent / "fixtures" / "formats"


@pytest.fixture
def detections(monkeypatch) -> list[str]:
    """The names of the files ``detect`` is called on, wherever a module holds it."""
    calls: list[str] = []
    real = importlib.import_module("analysis.formats.detect").detect  # the package's `detect` is the function

    def counting(path, name=None):
        calls.append(Path(path).name)
        return real(path, name)

    holders = [m for n, m in list(sys.modules.items())
               if n.startswith("analysis") and getattr(m, "detect", None) is real]
    assert len(holders) >= 2  # analysis.formats.detect itself, and the readers that call it
    for m in holders:
        monkeypatch.setattr(m, "detect", counting)
    return calls


@pytest.fixture
def exported(tmp_path) -> dict[str, Path]:
    store = Store(tmp_path / "src.duckdb")
    run = ingest_file(store, FIX / "openai_chat.jsonl").run_id
    return {fmt: thinkscope.export_run(store, run, tmp_path / f"run.{fmt}") for fmt in ("parquet", "csv", "jsonl")}


@pytest.mark.parametrize("name", ["openai_chat.jsonl", "vllm_reasoning.jsonl", "token_table.csv",
                                  "llamacpp_completion.json"])
def test_an_import_detects_its_file_once(detections, tmp_path, name):
    res = ingest_files(Store(tmp_path / "s.duckdb"), [FIX / name])
    assert res[0].n_traces > 0
    assert detections == [name]


def test_the_ingest_command_detects_each_file_once(detections, tmp_path, capsys):
    files = [FIX / "batch_input.jsonl", FIX / "batch_output.jsonl", FIX / "sglang_chat.jsonl"]
    assert main(["--store", str(tmp_path / "s.duckdb"), "ingest", *map(str, files)]) == 0
    assert sorted(detections) == sorted(f.name for f in files)


def test_a_named_format_is_not_detected(detections, tmp_path):
    ingest_file(Store(tmp_path / "s.duckdb"), FIX / "openai_chat.jsonl", format="openai_chat")
    p = preview(FIX / "token_table.csv", format="token_table")
    assert p.n_traces and detections == []


def test_a_preview_detects_once(detections):
    p = preview(FIX / "openai_chat.jsonl")
    assert p.detection.format == "openai_chat" and p.traces and p.fields
    assert detections == ["openai_chat.jsonl"]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_an_export_read_back_or_imported_is_detected_once(detections, exported, tmp_path, fmt):
    detections.clear()  # the source run's import
    info, traces = read_export(exported[fmt])
    assert info["name"] == "openai_chat" and traces
    assert detections == [f"run.{fmt}"]
    detections.clear()
    store = Store(tmp_path / f"back-{fmt}.duckdb")
    assert store.traces(import_export(store, exported[fmt])).shape[0] == len(traces)
    assert detections == []  # the import names the format
    detections.clear()
    assert ingest_files(store, [exported[fmt]])[0].format == thinkscope.NAME
    assert detections == [f"run.{fmt}"]
