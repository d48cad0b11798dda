"""What the lake tells about its datasets, and what its REST API sends and receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, Field

from aimesh.protocol import STORED_INT_MAX

__all__ = [
    "Column",
    "CompactResult",
    "DatasetInfo",
    "DatasetSummary",
    "DatasetVersion",
    "IngestResult",
    "QueryAnswer",
    "QueryRequest",
    "QueryResult",
    "SourceFormat",
    "VacuumResult",
]

SourceFormat = Literal["csv", "parquet", "json", "jsonl"]
"""The file formats ingest reads (``json``: one array of objects, or objects one a line)."""


class Column(BaseModel):
    """One column of a schema."""

    name: str
    type: str = Field(description="Arrow type, e.g. int64, double, string, timestamp[us].")
    nullable: bool = True


class DatasetVersion(BaseModel):
    """One commit of a dataset's Delta table."""

    version: int
    timestamp: datetime
    operation: str = Field(description="WRITE, CREATE TABLE, DELETE, OPTIMIZE...")
    mode: str | None = Field(default=None, description="Append, Overwrite...")
    rows_added: int | None = None
    files_added: int | None = None
    metadata: dict[str, str] = Field(
        default_factory=dict, description="What aimesh recorded: source, sink sequence..."
    )


class DatasetSummary(BaseModel):
    """A dataset as ``aimesh lake list`` shows it: its latest version and its size."""

    name: str
    version: int
    rows: int
    size_bytes: int
    files: int
    updated: datetime


class DatasetInfo(DatasetSummary):
    """A dataset at one version: its schema, partitioning and every version's history."""

    location: str
    columns: list[Column]
    partition_by: list[str] = Field(default_factory=list)
    created: datetime
    latest_version: int
    versions: list[DatasetVersion] = Field(
        default_factory=list, description="The newest versions (100 by default), newest first."
    )


class IngestResult(BaseModel):
    """What one ingest (or one committed sink batch) wrote."""

    dataset: str
    version: int = Field(description="The version this write created.")
    rows: int
    bytes_read: int = 0
    sources: int = Field(default=0, description="Files read.")
    created: bool = Field(default=False, description="Whether this write created the dataset.")
    new_columns: list[str] = Field(default_factory=list, description="Columns added (evolve).")
    seconds: float = 0.0


class CompactResult(BaseModel):
    """What one compaction did: small files rewritten into larger ones, as a new version."""

    dataset: str
    version: int = Field(
        description="The version the compaction created (or the latest, if it had nothing to do)."
    )
    compacted: bool = Field(description="Whether files were rewritten (and a version written).")
    files_before: int = Field(description="Live files before.")
    files_after: int = Field(description="Live files after.")
    files_removed: int = Field(
        default=0, description="Small files replaced (old versions still read them)."
    )
    files_added: int = Field(default=0, description="Larger files written.")
    rows: int
    seconds: float = 0.0


class VacuumResult(BaseModel):
    """What one vacuum deleted (or, as a dry run, would delete)."""

    dataset: str
    version: int = Field(description="The dataset's latest version after the vacuum.")
    dry_run: bool
    retain_hours: int = Field(description="Files removed from the table longer ago are deleted.")
    files: list[str] = Field(
        default_factory=list,
        description="Data files deleted (with dry_run: that would be), relative to the table.",
    )
    seconds: float = 0.0


class QueryRequest(BaseModel):
    """A SQL query over the lake's datasets (each dataset is a table of that name)."""

    sql: str = Field(min_length=1, max_length=100_000)
    version: int | None = Field(
        default=None,
        ge=0,
        le=STORED_INT_MAX,
        description="Read the one dataset the query names at this version.",
    )
    versions: dict[str, Annotated[int, Field(ge=0, le=STORED_INT_MAX)]] = Field(
        default_factory=dict, description="Read these datasets at these versions."
    )
    limit: int | None = Field(
        default=None, ge=1, le=STORED_INT_MAX, description="Most rows to return."
    )


class QueryAnswer(BaseModel):
    """A query's rows, with the versions it read and whether the limit cut it short."""

    columns: list[Column]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    versions: dict[str, int]
    elapsed_ms: float


@dataclass(frozen=True)
class QueryResult:
    """A query's result as Arrow: the rows (at most the limit) and what was read."""

    table: pa.Table
    truncated: bool
    """More rows existed beyond the limit."""
    versions: dict[str, int] = field(default_factory=dict)
    """The version of each dataset the query read."""
    elapsed_s: float = 0.0
