"""Store verbs of runs recorded through inference servers: reopening a run to resume it, and
which (prompt, sample) pairs a run already holds."""

from __future__ import annotations

from .connection import _writer
from .values import json_settings


class ServerRunsMixin:
    """Verbs ``Store`` inherits for ``analysis.server``."""

    def reopen_run(self, run_id: int) -> None:
        """Mark a run 'running' again, with this process as its writer (``generate --resume``)."""
        with self.connect() as con:
            con.execute("UPDATE runs SET status = 'running', writer = ? WHERE run_id = ?", [_writer(), int(run_id)])

    def run_settings(self, run_id: int) -> dict | None:
        """A run's settings (None when there is no such run)."""
        with self.connect(write=False) as con:
            row = con.execute("SELECT settings FROM runs WHERE run_id = ?", [int(run_id)]).fetchone()
        return None if row is None else json_settings(row[0])

    def run_pairs(self, run_id: int) -> set[tuple[int, int]]:
        """The (prompt index, sample index) of every trace a run holds (its metadata's
        ``prompt_idx`` and its ``sample_idx``)."""
        with self.connect(write=False) as con:
            rows = con.execute(
                "SELECT CAST(json_extract(metadata, '$.prompt_idx') AS INTEGER), sample_idx FROM traces "
                "WHERE run_id = ?", [int(run_id)]).fetchall()
        return {(int(p), int(s)) for p, s in rows if p is not None and s is not None}
