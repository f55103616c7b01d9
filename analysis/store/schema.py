"""The store's tables: their schema, its version, and the migrations between versions."""

from __future__ import annotations

from typing import Callable

import pyarrow as pa

from .. import settings

SCHEMA_VERSION = 4

#: estimator -> tokens column
ENTROPY_COLUMNS = {
    "full": "entropy_full",
    "full_t1": "entropy_full_t1",
    "topk_renorm": "entropy_topk_renorm",
    "topk_tail": "entropy_topk_tail",
    "epr": "entropy_epr",
}
#: rows per row group of the store's tables (DuckDB's default is 122,880). A batch of at
#: least one row group is written to the file as it is inserted ("optimistic writes") instead
#: of going through the write-ahead log and then the checkpoint on detach, which compresses
#: every value a second time: for 50,000-row batches of token rows, DuckDB's own insert went
#: from ~176,000 to ~500,000 rows/s here, and zone maps skip more of the tokens table per trace.
ROW_GROUP_SIZE = int(settings.ROW_GROUP_SIZE.number(minimum=1, lenient=True))
#: local ids for token texts with no tokenizer id start here, so they never meet real ids
LOCAL_ID_BASE = 1 << 30

#: trace metadata fields that get their own column (everything else stays in `metadata`)
TRACE_META_COLUMNS = {
    "problem_id": "VARCHAR",
    "question": "VARCHAR",
    "gold_answer": "VARCHAR",
    "level": "DOUBLE",
    "correct": "BOOLEAN",
    "pred_answer": "VARCHAR",
    "sample_idx": "INTEGER",
    "model": "VARCHAR",
}

#: branching (analysis.branch): rollouts continued from a position of a parent trace
BRANCH_TABLES = """
CREATE TABLE IF NOT EXISTS branch_rollouts (
    trace_id BIGINT PRIMARY KEY,      -- the rollout, a trace of the parent run's branch run
    parent_trace_id BIGINT NOT NULL,
    pos INTEGER NOT NULL,             -- position of the parent's completion it continues from
    kind VARCHAR NOT NULL,            -- 'original', 'alternative' or 'fresh' (sampled at pos)
    forced_token_id INTEGER,          -- the token put at pos (the sampled one for 'fresh')
    forced_token VARCHAR,
    forced_p DOUBLE,                  -- the model's probability of the forced token at pos
    rollout INTEGER NOT NULL,         -- index within its branch
    answer VARCHAR,                   -- extracted final answer; NULL: none extracted
    correct BOOLEAN                   -- NULL: ungraded (no gold answer, or no answer)
);
CREATE TABLE IF NOT EXISTS branch_positions (
    parent_trace_id BIGINT NOT NULL,
    pos INTEGER NOT NULL,
    settings JSON,                    -- n, p_min, budget, sampling, adaptive tolerance
    n_generated INTEGER NOT NULL,     -- rollouts generated
    n_budget INTEGER NOT NULL,        -- rollouts the full budget would have generated
    new_tokens BIGINT NOT NULL,
    seconds DOUBLE,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (parent_trace_id, pos)
);
"""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    source VARCHAR NOT NULL,          -- 'generate', 'score', 'demo', 'upload:<format>', ...
    model VARCHAR,
    settings JSON,                    -- generation settings, marker, file name, ...
    created_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,          -- 'running', 'complete', 'interrupted', 'failed'
    content_hash VARCHAR,             -- sha256 of an imported file (unique: runs_content_hash)
    n_traces INTEGER DEFAULT 0,
    n_tokens BIGINT DEFAULT 0,
    writer VARCHAR                    -- JSON (host, pid, start) of the process writing a 'running' run
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_content_hash ON runs (content_hash);
CREATE TABLE IF NOT EXISTS traces (
    trace_id BIGINT PRIMARY KEY,
    run_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,             -- order within the run
    source_id VARCHAR,
    prompt VARCHAR,                   -- the completion's text is its tokens joined (macro completions(run_id))
    n_tokens INTEGER NOT NULL,
    boundary INTEGER NOT NULL,        -- first answer token; = n_tokens when there is no answer part
    estimator VARCHAR NOT NULL,       -- best estimator the numbers allow
    k INTEGER NOT NULL,               -- number of top-k alternatives recorded
    {", ".join(f"{c} {t}" for c, t in TRACE_META_COLUMNS.items())},
    metadata JSON
);
CREATE TABLE IF NOT EXISTS trace_stats (
    trace_id BIGINT NOT NULL,
    estimator VARCHAR NOT NULL,
    phase VARCHAR NOT NULL,           -- 'all', 'thinking', 'answer'
    mean_entropy DOUBLE,              -- nats; sequence entropy (metrics.sequence_entropy)
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    trace_id BIGINT NOT NULL,
    pos INTEGER NOT NULL,
    token_id INTEGER,
    token VARCHAR,
    logprob FLOAT,
    entropy FLOAT,                    -- the trace's best estimator, nats
    entropy_full FLOAT,
    entropy_full_t1 FLOAT,
    entropy_topk_renorm FLOAT,
    entropy_topk_tail FLOAT,
    entropy_epr FLOAT,
    topk_ids INTEGER[],
    topk_logprobs FLOAT[]
);
CREATE OR REPLACE MACRO completions(rid) AS TABLE  -- a run's completion texts, from its tokens
    SELECT trace_id, string_agg(token, '' ORDER BY pos) AS completion FROM tokens
    WHERE trace_id IN (SELECT trace_id FROM traces WHERE run_id = rid) GROUP BY trace_id;
CREATE TABLE IF NOT EXISTS vocab (run_id INTEGER NOT NULL, token_id INTEGER NOT NULL, text VARCHAR);
CREATE TABLE IF NOT EXISTS token_layers (
    trace_id BIGINT NOT NULL,
    pos INTEGER NOT NULL,
    lens_entropy FLOAT[],             -- logit-lens entropy per recorded layer, nats
    lens_top1 INTEGER[],              -- logit-lens top-1 token id per recorded layer
    attn_entropy FLOAT[],             -- attention entropy per layer, mean over heads, nats
    attn_entropy_norm FLOAT[],        -- the same divided by ln(keys the query sees) = ln(q + 1), q the
                                      -- query's 0-based absolute position (prompt included, padding
                                      -- not): ln(prompt tokens + pos) for completion token pos; NaN at 1 key
    attn_head_entropy FLOAT[]         -- per head, for the chosen layer
);
""" + BRANCH_TABLES

#: per-layer arrays of token_layers and their element types
LAYER_FIELDS = {"lens_entropy": pa.float32(), "lens_top1": pa.int32(), "attn_entropy": pa.float32(),
                "attn_entropy_norm": pa.float32(), "attn_head_entropy": pa.float32()}


def _migrate_1_to_2(con) -> None:
    """Version 1 stored each completion's text in traces as well as in its tokens; the text is
    now derived from the tokens (the `completions(run_id)` macro), so that appending traces
    never rewrites kilobytes of text per trace at the next checkpoint."""
    con.execute("ALTER TABLE traces DROP COLUMN IF EXISTS completion")


def _migrate_2_to_3(con) -> None:
    """Version 3 records a running run's writer process (so a killed one is recognised) and
    makes content hashes unique (so two imports of one file cannot both commit). Runs that
    already share a hash keep it on the first; the later ones get it in their settings."""
    con.execute("ALTER TABLE runs ADD COLUMN IF NOT EXISTS writer VARCHAR")
    con.execute("""
        UPDATE runs SET settings = json_merge_patch(coalesce(settings, '{}'),
                            json_object('content_hash', content_hash, 'duplicate_of', d.first)),
                        content_hash = NULL
        FROM (SELECT content_hash AS h, min(run_id) AS first FROM runs
              WHERE content_hash IS NOT NULL GROUP BY content_hash HAVING count(*) > 1) d
        WHERE runs.content_hash = d.h AND runs.run_id > d.first""")


def _migrate_3_to_4(con) -> None:
    """Version 4 adds the branching tables (rollouts linked to a parent trace and position)."""
    con.execute(BRANCH_TABLES)


#: _MIGRATIONS[v - 1] brings a store of version v to version v + 1
_MIGRATIONS: list[Callable] = [_migrate_1_to_2, _migrate_2_to_3, _migrate_3_to_4]
