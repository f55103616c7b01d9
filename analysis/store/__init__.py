"""The DuckDB store, the one place that speaks SQL to the store's tables.

Parts: ``connection`` (the process's DuckDB engine, attaching a file with locks and retries,
faults as ``StoreError``), ``schema`` (tables, version, migrations), ``batch`` (traces as Arrow
tables for one bulk insert), ``values`` (Python values as stored), ``verbs`` (``Store``: every
read and write the rest of the project uses).
"""

from ..errors import DuplicateContentError
from .batch import Batch, NextIds, build_batch, insert_tables
from .connection import (DEFAULT_STORE, ENV_STORE, Database, EngineError, StoreError, default_store_path,
                         fault, free_bytes, mb, one_line, writer_gone)
from .schema import (ENTROPY_COLUMNS, LAYER_FIELDS, LOCAL_ID_BASE, ROW_GROUP_SIZE, SCHEMA,
                     SCHEMA_VERSION, TRACE_META_COLUMNS)
from .values import json_settings, json_text, valid_text
from .verbs import RUN_TRACE_FIELDS, WRITE_AHEAD, Store

__all__ = [
    "Batch", "NextIds", "build_batch", "insert_tables", "DEFAULT_STORE", "ENV_STORE", "Database",
    "EngineError", "StoreError", "default_store_path", "fault", "free_bytes", "mb", "one_line", "writer_gone",
    "ENTROPY_COLUMNS", "LAYER_FIELDS", "LOCAL_ID_BASE", "ROW_GROUP_SIZE", "SCHEMA",
    "SCHEMA_VERSION", "TRACE_META_COLUMNS", "json_settings", "json_text", "valid_text",
    "RUN_TRACE_FIELDS", "WRITE_AHEAD", "DuplicateContentError", "Store",
]
