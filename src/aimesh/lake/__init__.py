"""The data lake: datasets as versioned Delta tables, ingested in bounded chunks, read by SQL.

- :func:`open_lake` (also :func:`open_dataset`) returns the :class:`Lake` of the settings:
  ``ingest`` files, ``write`` Arrow, ``describe`` and ``list`` datasets, ``read`` or
  ``iter_batches`` a snapshot (``dataset@version``), ``query`` with SQL (DuckDB).
- :meth:`Lake.compact` rewrites a dataset's small files into larger ones (a new version);
  :meth:`Lake.vacuum` deletes the files that only versions older than its retention read.
- :class:`DatasetRef` parses ``transactions@3``; :meth:`Lake.pin` fixes a reference's version.
- :class:`LakeSink` feeds a dataset from a bus subject, at least once and without duplicates.
- The REST API (``/api/lake``) is in ``aimesh.lake.app``; import it only to serve.
"""

from aimesh.lake.lake import (
    MAX_RETAIN_HOURS,
    MAX_TARGET_SIZE,
    VACUUM_RETAIN_HOURS,
    Lake,
    ProgressCallback,
    open_dataset,
    open_lake,
)
from aimesh.lake.refs import DatasetRef, check_dataset_name
from aimesh.lake.sink import LakeSink, SinkCommit, sink_names
from aimesh.lake.types import (
    Column,
    CompactResult,
    DatasetInfo,
    DatasetSummary,
    DatasetVersion,
    IngestResult,
    QueryAnswer,
    QueryRequest,
    QueryResult,
    SourceFormat,
    VacuumResult,
)

__all__ = [
    "MAX_RETAIN_HOURS",
    "MAX_TARGET_SIZE",
    "VACUUM_RETAIN_HOURS",
    "Column",
    "CompactResult",
    "DatasetInfo",
    "DatasetRef",
    "DatasetSummary",
    "DatasetVersion",
    "IngestResult",
    "Lake",
    "LakeSink",
    "ProgressCallback",
    "QueryAnswer",
    "QueryRequest",
    "QueryResult",
    "SinkCommit",
    "SourceFormat",
    "VacuumResult",
    "check_dataset_name",
    "open_dataset",
    "open_lake",
    "sink_names",
]
