"""The bundled demo traces: exports under data/demo/, loaded into an empty store."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from .formats.ingest import import_export
from .store import Store

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"


def demo_files() -> list[Path]:
    return sorted(DEMO_DIR.glob("*.parquet"))


def load_demo(store: Store, if_empty: bool = True) -> int:
    """Import every demo file whose run is not in the store yet; return how many were loaded.

    With ``if_empty``, do nothing when the store already has runs.
    """
    existing = store.runs()
    if if_empty and not existing.empty:
        return 0
    names = set(existing["name"]) if not existing.empty else set()
    loaded = 0
    for f in demo_files():
        info = json.loads(pq.read_schema(f).metadata[b"thinkscope_run"])
        if info.get("name") in names:
            continue
        import_export(store, f)
        loaded += 1
    return loaded
