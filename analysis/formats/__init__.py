"""Reading the trace files people already have into canonical traces, and importing them.

``detect`` names a file's format, ``read_traces`` streams its traces, ``ingest_file`` imports
a file atomically as a new run. One module per family of formats; see ``FORMATS``.
"""

from .detect import FORMATS, Detection, detect
from .ingest import IngestResult, MAX_BYTES, ingest_file, ingest_files, preview, read_traces

__all__ = ["FORMATS", "Detection", "detect", "IngestResult", "MAX_BYTES", "ingest_file", "ingest_files",
           "preview", "read_traces"]
