"""The store's branching verbs: rollouts continued from a position of a parent trace.

Rollouts are ordinary traces of a separate run per parent run (source 'branch'), so the
explorer opens them like any other trace and the parent run's statistics stay its own. The
``branch_rollouts`` table links each rollout to its parent trace, position, forced token and
branch kind; ``branch_positions`` records each finished position (what a resumed sweep skips).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from .values import json_settings, json_text

BRANCH_SOURCE = "branch"

#: columns of a rollout link row, in table order
LINK_COLUMNS = ("trace_id", "parent_trace_id", "pos", "kind", "forced_token_id", "forced_token",
                "forced_p", "rollout", "answer", "correct")


class BranchVerbs:
    """Mixin of ``Store``: reads and writes of the branching tables."""

    def branch_run(self, parent_run_id: int, model: str | None = None) -> int:
        """The id of the run that holds the rollouts of ``parent_run_id``'s traces (created once)."""
        df = self.query("SELECT run_id, settings FROM runs WHERE source = ? ORDER BY run_id", [BRANCH_SOURCE])
        for r in df.itertuples():
            if json_settings(r.settings).get("parent_run") == int(parent_run_id):
                return int(r.run_id)
        return self.create_run(f"branches of run {int(parent_run_id)}", BRANCH_SOURCE, model,
                               {"parent_run": int(parent_run_id)}, status="complete")

    def add_branch_position(self, branch_run_id: int, links: pd.DataFrame, position: dict) -> None:
        """Link stored rollouts to their parent and record the finished position, in one transaction.

        ``links`` has the columns of ``LINK_COLUMNS``; ``position`` the fields of
        ``branch_positions`` but created_at. A position branched again replaces the old record
        (its old rollouts stay, unlinked, until ``drop_unlinked_rollouts``)."""
        df = links.loc[:, list(LINK_COLUMNS)].copy()
        df["correct"] = df["correct"].astype("boolean")
        df["answer"] = df["answer"].astype(object).where(df["answer"].notna(), None)
        with self.connect() as con:
            con.execute("BEGIN")
            try:
                con.execute("DELETE FROM branch_rollouts WHERE parent_trace_id = ? AND pos = ?",
                            [int(position["parent_trace_id"]), int(position["pos"])])
                con.execute("DELETE FROM branch_positions WHERE parent_trace_id = ? AND pos = ?",
                            [int(position["parent_trace_id"]), int(position["pos"])])
                con.register("_links", df)
                con.execute(f"INSERT INTO branch_rollouts SELECT {', '.join(LINK_COLUMNS)} FROM _links")
                con.unregister("_links")
                con.execute(
                    "INSERT INTO branch_positions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [int(position["parent_trace_id"]), int(position["pos"]), json_text(position["settings"]),
                     int(position["n_generated"]), int(position["n_budget"]), int(position["new_tokens"]),
                     float(position["seconds"]), datetime.now(timezone.utc).replace(tzinfo=None)])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self.finish_run(branch_run_id, "complete")

    def drop_unlinked_rollouts(self, branch_run_id: int) -> int:
        """Delete the rollouts of a branch run that no link row names (a position interrupted
        between storing its rollouts and linking them, or branched again); return how many."""
        with self.connect() as con:
            con.execute("BEGIN")
            ids = [r[0] for r in con.execute(
                "SELECT trace_id FROM traces WHERE run_id = ? AND trace_id NOT IN "
                "(SELECT trace_id FROM branch_rollouts)", [int(branch_run_id)]).fetchall()]
            if ids:
                for table in ("token_layers", "tokens", "trace_stats", "traces"):
                    con.execute(f"DELETE FROM {table} WHERE trace_id IN (SELECT unnest(?::BIGINT[]))", [ids])
            con.execute("COMMIT")
        if ids:
            self.finish_run(branch_run_id, "complete")
        return len(ids)

    def branch_positions(self, parent_trace_id: int) -> pd.DataFrame:
        """The finished positions of a trace: pos, settings (dict), n_generated, n_budget,
        new_tokens, seconds, created_at; ordered by position."""
        df = self.query("SELECT * FROM branch_positions WHERE parent_trace_id = ? ORDER BY pos",
                        [int(parent_trace_id)])
        df["settings"] = [json_settings(s) for s in df["settings"]]
        return df

    def branch_rollouts(self, parent_trace_id: int | None = None, run_id: int | None = None) -> pd.DataFrame:
        """Link rows of a parent trace's rollouts (or of every trace of a parent run), with each
        rollout's token count; ordered by parent, position, kind, forced token, rollout."""
        where, params = ("l.parent_trace_id = ?", [int(parent_trace_id)]) if parent_trace_id is not None else \
            ("l.parent_trace_id IN (SELECT trace_id FROM traces WHERE run_id = ?)", [int(run_id)])
        return self.query(f"""
            SELECT l.*, t.n_tokens FROM branch_rollouts l JOIN traces t USING (trace_id)
            JOIN branch_positions p ON p.parent_trace_id = l.parent_trace_id AND p.pos = l.pos
            WHERE {where} ORDER BY l.parent_trace_id, l.pos, l.kind, l.forced_token_id, l.rollout""", params)

    def branched_traces(self, run_id: int) -> pd.DataFrame:
        """Traces of a run with finished branch positions: trace_id, positions, rollouts."""
        return self.query("""
            SELECT p.parent_trace_id AS trace_id, count(*) AS positions, sum(p.n_generated) AS rollouts
            FROM branch_positions p JOIN traces t ON t.trace_id = p.parent_trace_id
            WHERE t.run_id = ? GROUP BY ALL ORDER BY 1""", [int(run_id)])

    def rollout_parent(self, trace_id: int) -> dict | None:
        """The link row of a rollout (parent_trace_id, pos, kind, forced token ...), or None."""
        df = self.query("SELECT * FROM branch_rollouts WHERE trace_id = ?", [int(trace_id)])
        return None if df.empty else df.iloc[0].to_dict()
