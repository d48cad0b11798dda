"""The lake: versioned datasets (Delta tables), ingest in bounded chunks, SQL, maintenance.

:class:`Lake` is the core that the CLI, the REST API and the bus sink share. It imports no
web framework and no bus; everything it takes and returns is Arrow or a declared model.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from aimesh.config import Settings
from aimesh.errors import (
    AimeshError,
    DatasetVersionGone,
    InvalidData,
    InvalidRequest,
    QueryError,
    StoreUnavailable,
)
from aimesh.lake.delta import DeltaTables, columns_of, first_line, missing_file
from aimesh.lake.query import QueryCancel, QueryEngine
from aimesh.lake.refs import DatasetRef, check_dataset_name
from aimesh.lake.schema import conform, delta_schema, plan_append
from aimesh.lake.sources import detect_format, find_sources, open_source
from aimesh.lake.types import (
    CompactResult,
    DatasetInfo,
    DatasetSummary,
    DatasetVersion,
    IngestResult,
    QueryResult,
    VacuumResult,
)

__all__ = ["VACUUM_RETAIN_HOURS", "Lake", "open_dataset", "open_lake"]

ProgressCallback = Callable[[int, int], None]
"""Called with ``(bytes_read, total_bytes)`` as an ingest reads its files."""

_EXPORT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}

VACUUM_RETAIN_HOURS = 168
"""Delta's default retention (a week): a vacuum keeping less needs ``force``."""
MAX_RETAIN_HOURS = 876_000
"""The longest retention a vacuum takes (a century)."""
MAX_TARGET_SIZE = 1024**4
"""The largest file size a compaction aims at (1 TiB)."""


class Lake:
    """Datasets as Delta tables under one location: ingest, describe, read, query, maintain."""

    def __init__(
        self,
        tables: DeltaTables,
        *,
        chunk_rows: int = 131_072,
        chunk_bytes: int = 8 * 1024**2,
        query_rows: int = 1_000,
        query_timeout_s: float | None = 30.0,
        query_memory_limit: str = "1GB",
        max_concurrent_queries: int = 2,
        query_wait_s: float = 5.0,
        query_temp_dir: Path | None = None,
    ) -> None:
        self.tables = tables
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.query_rows = query_rows
        self.engine = QueryEngine(
            tables,
            timeout_s=query_timeout_s,
            memory_limit=query_memory_limit,
            max_concurrent=max_concurrent_queries,
            wait_s=query_wait_s,
            temp_dir=query_temp_dir,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake these settings describe (``lake.url``, or HOME/lake)."""
        lake = settings.lake
        return cls(
            DeltaTables(settings.lake_url, lake.storage_options),
            chunk_rows=lake.chunk_rows,
            chunk_bytes=lake.chunk_bytes,
            query_rows=lake.query_rows,
            query_timeout_s=lake.query_timeout_s,
            query_memory_limit=lake.query_memory_limit,
            max_concurrent_queries=lake.max_concurrent_queries,
            query_wait_s=lake.query_wait_s,
            query_temp_dir=settings.home_dir / "lake-tmp",
        )

    @property
    def location(self) -> str:
        """The folder or URL holding the tables."""
        return self.tables.root

    # -- what is there ---------------------------------------------------------------------

    def list_datasets(self) -> list[DatasetSummary]:
        """Every dataset at its latest version, by name."""
        summaries = []
        for name in self.tables.names():
            table = self.tables.find(name)
            if table is None:  # removed since the listing
                continue
            rows, size, files = DeltaTables.totals(table)
            latest = self.tables.history(table, limit=1)
            summaries.append(
                DatasetSummary(
                    name=name,
                    version=int(table.version()),
                    rows=rows,
                    size_bytes=size,
                    files=files,
                    updated=latest[0].timestamp,
                )
            )
        return summaries

    def describe(
        self, name: str, version: int | None = None, *, history_limit: int | None = 100
    ) -> DatasetInfo:
        """Dataset ``name`` at ``version`` (default: latest): schema, size, its versions.

        ``versions`` lists the newest ``history_limit`` versions (``None``: all of them).
        """
        check_dataset_name(name)
        table = self.tables.open(name, version)
        latest = table if version is None else self.tables.open(name)
        rows, size, files = DeltaTables.totals(table)
        history = self.tables.history(latest, history_limit)
        this = next((v for v in history if v.version == table.version()), None)
        if this is None:  # older than the history asked for
            this = self.tables.history(table, 1)[0]
        return DatasetInfo(
            name=name,
            version=int(table.version()),
            rows=rows,
            size_bytes=size,
            files=files,
            updated=this.timestamp,
            location=self.tables.uri(name),
            columns=columns_of(DeltaTables.schema(table)),
            partition_by=list(table.metadata().partition_columns),
            created=DeltaTables.created(latest),
            latest_version=int(latest.version()),
            versions=history,
        )

    def history(self, name: str, limit: int | None = None) -> list[DatasetVersion]:
        """The versions of dataset ``name``, newest first (the newest ``limit`` of them)."""
        check_dataset_name(name)
        if limit is not None and limit < 1:
            raise InvalidRequest(f"limit must be 1 or more, got {limit}")
        return self.tables.history(self.tables.open(name), limit)

    def schema(self, name: str, version: int | None = None) -> pa.Schema:
        """Dataset ``name``'s Arrow schema at ``version`` (default: latest)."""
        check_dataset_name(name)
        return DeltaTables.schema(self.tables.open(name, version))

    def pin(self, ref: DatasetRef | str) -> DatasetRef:
        """``ref`` with its version fixed (``transactions`` -> ``transactions@7``), checked."""
        ref = DatasetRef.parse(ref) if isinstance(ref, str) else ref
        table = self.tables.open(ref.name, ref.version)
        return DatasetRef(ref.name, int(table.version()))

    # -- reading ---------------------------------------------------------------------------

    def read(
        self, name: str, version: int | None = None, *, columns: Sequence[str] | None = None
    ) -> pa.Table:
        """Dataset ``name`` at ``version`` (default: latest) as one Arrow table."""
        check_dataset_name(name)
        table = self.tables.open(name, version)
        dataset = self.tables.dataset(table)
        with self._reading(name, int(table.version())):
            return dataset.to_table(columns=list(columns) if columns is not None else None)

    def iter_batches(
        self,
        name: str,
        version: int | None = None,
        batch_rows: int = 65_536,
        *,
        columns: Sequence[str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Dataset ``name`` at ``version`` in batches of at most ``batch_rows`` rows.

        Memory stays near one Parquet row group and one batch, however big the dataset.
        The version is fixed when this is called, whatever is written while iterating.
        """
        check_dataset_name(name)
        if batch_rows < 1:
            raise InvalidRequest(f"batch_rows must be 1 or more, got {batch_rows}")
        table = self.tables.open(name, version)
        dataset = self.tables.dataset(table)
        with self._reading(name, int(table.version())):
            scanner = dataset.scanner(
                columns=list(columns) if columns is not None else None,
                batch_size=batch_rows,
                batch_readahead=1,
                fragment_readahead=1,
            )

        def batches() -> Iterator[pa.RecordBatch]:
            with self._reading(name, int(table.version())):
                yield from (batch for batch in scanner.to_batches() if batch.num_rows)

        return batches()

    @contextlib.contextmanager
    def _reading(self, name: str, version: int) -> Iterator[None]:
        """Arrow's errors while reading the files of ``name`` at ``version``, as aimesh's."""
        try:
            yield
        except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
            raise InvalidRequest(f"cannot read {name}: {first_line(exc)}") from exc
        except FileNotFoundError as exc:
            raise self._version_gone(name, version, exc) from exc
        except OSError as exc:
            raise StoreUnavailable(f"cannot read {name}: {first_line(exc)}") from exc

    def _version_gone(
        self, name: str, version: int | None, exc: BaseException
    ) -> DatasetVersionGone:
        """The error for a read of ``name`` at ``version`` that found a data file gone."""
        latest = int(self.tables.open(name).version())
        missing = missing_file(exc)
        # The file as the dataset names it (partition folders and file name), not its path.
        file = missing[1].rpartition(f"/{name}/")[2] if missing is not None else first_line(exc)
        return DatasetVersionGone(name, latest if version is None else version, latest, file)

    # -- writing ---------------------------------------------------------------------------

    def ingest(
        self,
        name: str,
        sources: Sequence[str | Path],
        *,
        format: str | None = None,
        evolve: bool = False,
        partition_by: Sequence[str] | None = None,
        chunk_rows: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IngestResult:
        """Append files (CSV, Parquet, JSON, JSON lines; files, folders, globs) as one version.

        Creates the dataset on its first ingest. On an existing dataset the data must fit its
        schema (:class:`SchemaMismatch` otherwise, and nothing is written); ``evolve`` adds
        new columns. Memory is bounded by the chunk sizes, not by the files' size.
        """
        check_dataset_name(name)
        started = time.perf_counter()
        files = find_sources(sources)
        fmt = detect_format(files, format)
        rows = chunk_rows or self.chunk_rows
        existing = self.tables.find(name)
        total = sum(f.size for f in files)  # for the progress bar, before anything is read
        source = open_source(
            files,
            fmt,
            dataset=name,
            types=DeltaTables.schema(existing) if existing is not None else None,
            chunk_rows=rows,
            chunk_bytes=self.chunk_bytes,
            on_bytes=(lambda done: on_progress(done, total)) if on_progress else None,
        )
        shown = ", ".join(f.path.name for f in files[:5]) + (" ..." if len(files) > 5 else "")
        result = self._append(
            name,
            source.schema,
            source.batches,
            existing=existing is not None,
            evolve=evolve,
            partition_by=partition_by,
            row_group_rows=rows,
            metadata={"aimesh.source": shown, "aimesh.format": fmt},
        )
        return result.model_copy(
            update={
                "bytes_read": total,
                "sources": len(files),
                "seconds": time.perf_counter() - started,
            }
        )

    def write(
        self,
        name: str,
        data: pa.Table | pa.RecordBatchReader | pa.RecordBatch,
        *,
        evolve: bool = False,
        partition_by: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        app_transaction: tuple[str, int] | None = None,
    ) -> IngestResult:
        """Append Arrow data as one new version (creating the dataset if needed).

        ``app_transaction=(app_id, n)`` records that application ``app_id`` committed its
        ``n``-th unit of work in the same commit (see :meth:`transaction_version`), which is
        how a writer that restarts knows what it has already written.
        """
        check_dataset_name(name)
        started = time.perf_counter()
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        batches = iter(data.to_batches()) if isinstance(data, pa.Table) else iter(data)
        result = self._append(
            name,
            data.schema,
            batches,
            existing=self.tables.exists(name),
            evolve=evolve,
            partition_by=partition_by,
            row_group_rows=self.chunk_rows,
            metadata={
                f"aimesh.{k}" if not k.startswith("aimesh.") else k: v
                for k, v in (metadata or {}).items()
            },
            app_transaction=app_transaction,
        )
        return result.model_copy(update={"seconds": time.perf_counter() - started})

    def transaction_version(self, name: str, app_id: str) -> int | None:
        """The last ``n`` that :meth:`write` recorded for ``app_id`` on ``name`` (or ``None``)."""
        check_dataset_name(name)
        return self.tables.transaction_version(name, app_id)

    def _append(
        self,
        name: str,
        schema: pa.Schema,
        batches: Iterator[pa.RecordBatch],
        *,
        existing: bool,
        evolve: bool,
        partition_by: Sequence[str] | None,
        row_group_rows: int,
        metadata: Mapping[str, str],
        app_transaction: tuple[str, int] | None = None,
    ) -> IngestResult:
        table = self.tables.find(name) if existing else None
        new_columns: list[str] = []
        if table is None:
            target = delta_schema(schema)
            parts = _check_partitions(list(partition_by or []), target)
        else:
            plan = plan_append(name, DeltaTables.schema(table), schema, evolve=evolve)
            target, new_columns = plan.target, plan.new_columns
            parts = list(table.metadata().partition_columns)
            if partition_by is not None and list(partition_by) != parts:
                raise InvalidRequest(
                    f"dataset {name!r} is partitioned by {parts or 'nothing'}; "
                    "its partitioning cannot change on append"
                )
        rows = 0
        failures: list[BaseException] = []

        def conformed() -> Iterator[pa.RecordBatch]:
            nonlocal rows
            try:
                for batch in batches:
                    out = conform(batch, target, name)
                    rows += out.num_rows
                    yield out
            except BaseException as exc:
                # delta-rs reports a failing source as its own error (even Ctrl-C):
                # remember the real one to raise it instead.
                failures.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(target, conformed())
        try:
            version = self.tables.append(
                name,
                reader,
                partition_by=parts,
                merge_schema=bool(new_columns),
                row_group_rows=row_group_rows,
                metadata=metadata,
                app_transaction=app_transaction,
            )
        except AimeshError:
            if failures:
                raise failures[0] from None
            raise
        return IngestResult(
            dataset=name,
            version=version,
            rows=rows,
            created=table is None,
            new_columns=new_columns,
        )

    # -- SQL -------------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        *,
        version: int | None = None,
        versions: Mapping[str, int] | None = None,
        limit: int | None = None,
        cancel: QueryCancel | None = None,
    ) -> QueryResult:
        """Run one read-only SQL statement; each dataset is a table of its name.

        ``version`` reads the one dataset the query names at that version; ``versions``
        names a version per dataset. At most ``limit`` rows come back (``truncated`` says
        whether there were more); the query is stopped after the query timeout, or when
        ``cancel`` is called (from another thread).
        """
        if limit is not None and limit < 1:
            raise InvalidRequest(f"limit must be 1 or more, got {limit}")
        try:
            return self.engine.run(
                sql,
                limit=limit or self.query_rows,
                version=version,
                versions=versions,
                cancel=cancel,
            )
        except QueryError as exc:
            gone = self._gone_in_query(exc, version, versions)
            if gone is None:
                raise
            raise gone from exc

    def export(
        self,
        sql: str,
        dest: Path,
        *,
        version: int | None = None,
        versions: Mapping[str, int] | None = None,
        limit: int | None = None,
    ) -> int:
        """Write a query's whole result (or ``limit`` rows) to a .parquet or .csv file.

        The result streams to the file in chunks; the file appears only once complete.
        Returns the number of rows written.
        """
        kind = _EXPORT_FORMATS.get(dest.suffix.lower())
        if kind is None:
            raise InvalidRequest(f"cannot write {dest.name}: use a .parquet or .csv file")
        partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        rows = 0
        stream = self.engine.stream(
            sql, batch_rows=self.chunk_rows, limit=limit, version=version, versions=versions
        )
        try:
            with stream as (reader, _read):
                writer: pq.ParquetWriter | pacsv.CSVWriter
                if kind == "parquet":
                    writer = pq.ParquetWriter(partial, reader.schema)
                else:
                    writer = pacsv.CSVWriter(partial, reader.schema)
                with writer:
                    for batch in reader:
                        writer.write_batch(batch)
                        rows += batch.num_rows
            os.replace(partial, dest)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            gone = self._gone_in_query(exc, version, versions)
            raise gone or QueryError(first_line(exc)) from exc
        except QueryError as exc:
            gone = self._gone_in_query(exc, version, versions)
            if gone is None:
                raise
            raise gone from exc
        except OSError as exc:
            raise InvalidData(f"cannot write {dest}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return rows

    def _gone_in_query(
        self, exc: BaseException, version: int | None, versions: Mapping[str, int] | None
    ) -> DatasetVersionGone | None:
        """The error for a query that failed on a data file that is gone (else ``None``)."""
        missing = missing_file(exc)
        if missing is None:
            return None
        name = missing[0]
        return self._version_gone(name, (versions or {}).get(name, version), exc)

    # -- maintenance -----------------------------------------------------------------------

    def compact(self, name: str, target_size: int | None = None) -> CompactResult:
        """Rewrite dataset ``name``'s small files into larger ones, as one new version.

        Rows and schema stay as they were, and older versions still read their own files
        (until a :meth:`vacuum` deletes them). Files grow to about ``target_size`` bytes
        (default: the table's ``delta.targetFileSize``, or 100 MiB). With nothing to compact,
        no version is written (``compacted`` is false).
        """
        check_dataset_name(name)
        if target_size is not None and not 1 <= target_size <= MAX_TARGET_SIZE:
            raise InvalidRequest(
                f"target_size must be from 1 byte to {MAX_TARGET_SIZE} (1 TiB), got {target_size}"
            )
        started = time.perf_counter()
        self.tables.open(name)  # DatasetNotFound before anything else
        with self.tables.maintenance(name):
            # Read under the lock: a compaction that ended meanwhile must be seen, or this
            # one would merge the files it already merged (rows twice over).
            table = self.tables.open(name)
            read_at = int(table.version())
            files_before = DeltaTables.totals(table)[2]
            removed, added = self.tables.compact(
                name, table, target_size=target_size, row_group_rows=self.chunk_rows
            )
        # Others (a sink) may have committed since: describe the compaction's own version.
        version = self._compaction_after(name, read_at) if removed else read_at
        rows, _, files_after = DeltaTables.totals(self.tables.open(name, version))
        return CompactResult(
            dataset=name,
            version=version,
            compacted=removed > 0,
            files_before=files_before,
            files_after=files_after,
            files_removed=removed,
            files_added=added,
            rows=rows,
            seconds=time.perf_counter() - started,
        )

    def _compaction_after(self, name: str, version: int) -> int:
        """The version of the first compaction of ``name`` after ``version``."""
        latest = self.tables.open(name)
        since = self.tables.history(latest, int(latest.version()) - version)  # the new ones only
        ours = [v.version for v in since if v.operation == "OPTIMIZE"]
        return min(ours) if ours else int(latest.version())

    def vacuum(
        self,
        name: str,
        retain_hours: int = VACUUM_RETAIN_HOURS,
        *,
        dry_run: bool = True,
        force: bool = False,
    ) -> VacuumResult:
        """Delete the data files that no version of the last ``retain_hours`` hours reads.

        Afterwards the versions older than that can no longer be read (time travel to them
        fails with :class:`DatasetVersionGone`), and neither can a reader still on one. Below
        Delta's default of 168 hours this takes ``force`` (:class:`InvalidRequest` otherwise,
        and nothing is deleted). ``dry_run`` (the default) only lists the files.
        """
        check_dataset_name(name)
        if not 0 <= retain_hours <= MAX_RETAIN_HOURS:
            raise InvalidRequest(
                f"retain_hours must be from 0 to {MAX_RETAIN_HOURS} (a century), got {retain_hours}"
            )
        if retain_hours < VACUUM_RETAIN_HOURS and not (force or dry_run):
            raise InvalidRequest(
                f"refusing to vacuum dataset {name!r} with a retention of {retain_hours} h, "
                f"under Delta's default of {VACUUM_RETAIN_HOURS} h: the versions older than "
                f"{retain_hours} h could no longer be read (time travel to them breaks), nor "
                "could a reader still on one; vacuum with force to do it anyway",
                name=name,
                retain_hours=retain_hours,
                minimum=VACUUM_RETAIN_HOURS,
            )
        started = time.perf_counter()
        self.tables.open(name)  # DatasetNotFound before anything else
        with self.tables.maintenance(name):
            table = self.tables.open(name)
            files = self.tables.vacuum(
                name, table, retain_hours=retain_hours, dry_run=dry_run, force=force or dry_run
            )
        return VacuumResult(
            dataset=name,
            version=int(table.version()),
            dry_run=dry_run,
            retain_hours=retain_hours,
            files=files,
            seconds=time.perf_counter() - started,
        )


def _check_partitions(partition_by: list[str], schema: pa.Schema) -> list[str]:
    unknown = [c for c in partition_by if c not in schema.names]
    if unknown:
        raise InvalidRequest(
            f"cannot partition by {', '.join(unknown)}: no such column "
            f"(columns: {', '.join(schema.names)})"
        )
    if len(set(partition_by)) == len(schema.names):
        raise InvalidRequest("cannot partition by every column: nothing would be left to store")
    nested = [c for c in partition_by if pa.types.is_nested(schema.field(c).type)]
    if nested:
        raise InvalidRequest(f"cannot partition by nested columns: {', '.join(nested)}")
    return partition_by


def open_lake(settings: Settings) -> Lake:
    """The lake of these settings: what the CLI, the services and training workers use."""
    return Lake.from_settings(settings)


open_dataset = open_lake
"""The same as :func:`open_lake` (the name the training workers' brief uses)."""
