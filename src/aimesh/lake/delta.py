"""The lake's Delta tables: one per dataset under one root folder or object-store URL.

Everything delta-rs raises is translated here, where it enters, into the nearest
:class:`~aimesh.errors.AimeshError`; nothing above this module sees a ``DeltaError``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)
from deltalake.fs import DeltaStorageHandler

from aimesh.errors import (
    Conflict,
    DatasetNotFound,
    DatasetVersionNotFound,
    InvalidRequest,
    SchemaMismatch,
    StoreUnavailable,
    foreign_message,
)
from aimesh.lake.filesystems import native_filesystem
from aimesh.lake.types import Column, DatasetVersion

__all__ = ["METADATA_PREFIX", "DeltaTables", "columns_of", "first_line", "missing_file"]

METADATA_PREFIX = "aimesh."
"""Commit metadata aimesh writes (``aimesh.source``, ``aimesh.sink.seq``...) starts so."""

_WRITE_ID = "aimesh.write_id"
# delta-rs queues the batches it is handed in a channel before its writers; by default the
# channel is long enough that a fast source (Parquet) piles up hundreds of MiB ahead of a
# slower encoder, so memory grows with the file, not the chunk. Two batches keep the writers
# fed. A value set in the environment wins. (Process-wide: delta-rs reads the environment.)
_BATCH_CHANNEL = ("DELTARS_WRITER_BATCH_CHANNEL_SIZE", "2")


def _streaming_writes() -> threading.BoundedSemaphore:
    """How many writes may stream batches into delta-rs at once in this process.

    delta-rs pulls a write's batches on one of its tokio worker threads, and ours come
    from Python (each ingest conforms its batches as they are read), so each pull waits
    for the GIL. Some delta-rs calls (``DeltaTable(uri)``, ``is_deltatable``, ``history``,
    reading through ``DeltaStorageHandler``, in deltalake 1.6) hold the GIL while they
    wait for those same workers to do their I/O. With every worker waiting for the GIL,
    the process deadlocks: seen on S3 with six writes at once on two cores, where the
    runtime has two workers. So the runtime gets at least four workers (a value in the
    environment wins; delta-rs's runtime reads it when it starts), and at most one fewer
    writes than it has workers stream at once: one worker is always free for the I/O.
    """
    os.environ.setdefault("TOKIO_WORKER_THREADS", str(max(4, os.cpu_count() or 1)))
    try:
        workers = int(os.environ["TOKIO_WORKER_THREADS"])
    except ValueError:
        workers = 1
    return threading.BoundedSemaphore(max(1, workers - 1))


_streaming = _streaming_writes()
# Commit files read at once for a history: on an object store each is one request.
_LOG_READERS = 8
# How a file that is not there is reported: by delta-rs's object store (local folder or
# bucket alike), and by Arrow's local and S3 filesystems (the dataset's reads).
_MISSING_OBJECT = re.compile(
    r"Object at location (\S+) not found"
    r"|(?:Failed to open local file|Path does not exist) '([^']+)'\. Detail: \[errno 2\]"
)
# How delta-rs refuses a vacuum below the retention the table is configured with.
_RETENTION_REFUSED = "Invalid retention period"
# The lock file of a local table's maintenance: Delta and vacuum leave `_` files alone.
_MAINTENANCE_LOCK = "_aimesh_maintenance.lock"
# Tables under maintenance in this process, by URI.
_maintained: set[str] = set()
_maintained_guard = threading.Lock()


def first_line(exc: BaseException) -> str:
    """An exception's message without the Rust backtrace delta-rs appends, nor server paths."""
    return foreign_message(exc)


def missing_file(exc: BaseException) -> tuple[str, str] | None:
    """``(dataset, path)`` of the data file a failed read did not find, or ``None``.

    A data file is missing when a vacuum deleted it while a version still names it. Arrow
    (or delta-rs) reports that as a ``FileNotFoundError``; DuckDB, reading the same Arrow
    dataset, copies the text into its own error. Either way the text names the file, under
    its dataset's folder (and partition folders, ``column=value``).
    """
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        found = _MISSING_OBJECT.search(str(cause))
        # Our own errors quote the library with the path hidden: the cause still has it.
        if found is not None and "<hidden>" not in found.group(0):
            path = found.group(1) or found.group(2)
            folders = [p for p in path.split("/")[:-1] if p and "=" not in p]
            return (folders[-1] if folders else "", path)
        cause = cause.__cause__
    return None


def columns_of(schema: pa.Schema) -> list[Column]:
    """A schema as :class:`Column` s."""
    return [Column(name=f.name, type=str(f.type), nullable=f.nullable) for f in schema]


class DeltaTables:
    """Opens, lists and writes the Delta table of each dataset under ``root``."""

    def __init__(self, root: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.local = "://" not in root or root.startswith("file://")

    def uri(self, name: str) -> str:
        """Where dataset ``name``'s table lives."""
        return f"{self.root}/{name}"

    def _options(self) -> dict[str, str] | None:
        return self.storage_options or None

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The datasets under the root, sorted (folders holding a ``_delta_log``)."""
        if self.local:
            root = Path(self.root.removeprefix("file://"))
            if not root.is_dir():
                return []
            try:
                return sorted(p.name for p in root.iterdir() if (p / "_delta_log").is_dir())
            except OSError as exc:
                raise StoreUnavailable(f"cannot list the lake: {first_line(exc)}") from exc
        return self._remote_names()

    def _remote_names(self) -> list[str]:
        try:
            # delta-rs's own object store at the root: it lists with the same storage options
            # (endpoint, keys, region) that open and write the tables.
            fs = pafs.PyFileSystem(DeltaStorageHandler(self.root, self._options()))
            entries = fs.get_file_info(pafs.FileSelector("", allow_not_found=True))
            folders = [e.base_name for e in entries if e.type == pafs.FileType.Directory]
            logs = fs.get_file_info([f"{name}/_delta_log" for name in folders])
        except (DeltaError, OSError, pa.ArrowException) as exc:
            raise StoreUnavailable(f"cannot list the lake: {first_line(exc)}") from exc
        return sorted(
            name
            for name, log in zip(folders, logs, strict=True)
            if log.type == pafs.FileType.Directory
        )

    def exists(self, name: str) -> bool:
        """Whether dataset ``name`` has a table."""
        try:
            return bool(DeltaTable.is_deltatable(self.uri(name), self._options()))
        except (DeltaError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot reach the lake for dataset {name!r}: {first_line(exc)}"
            ) from exc

    def open(self, name: str, version: int | None = None) -> DeltaTable:
        """The table of ``name`` at ``version`` (default: the latest).

        The latest is opened first and an older version loaded from it: delta-rs, asked for
        a version past the latest, looks for every commit up to it one by one (about 20 ns
        each: minutes for a large number), so such a version is refused before it is asked.
        """
        if version is not None and version < 0:
            raise InvalidRequest(f"dataset version must be 0 or more, got {version}")
        try:
            table = DeltaTable(self.uri(name), storage_options=self._options())
        except TableNotFoundError as exc:
            raise DatasetNotFound(name) from exc
        except (DeltaError, OSError) as exc:
            _storage_error(name, exc)
        latest = int(table.version())
        if version is None or version == latest:
            return table
        if version > latest:
            raise DatasetVersionNotFound(name, version, latest)
        try:
            table.load_as_version(version)
        except (DeltaError, OSError) as exc:  # cleaned up after a checkpoint
            raise DatasetVersionNotFound(name, version, latest) from exc
        return table

    def find(self, name: str) -> DeltaTable | None:
        """The latest table of ``name``, or ``None`` if the dataset does not exist yet."""
        try:
            return self.open(name)
        except DatasetNotFound:
            return None

    def dataset(self, table: DeltaTable) -> pads.FileSystemDataset:
        """The table's files as an Arrow dataset, read through Arrow's own filesystem where
        one fits the lake (see :mod:`aimesh.lake.filesystems`)."""
        native = native_filesystem(table.table_uri, self.storage_options)
        return table.to_pyarrow_dataset(filesystem=native)

    @staticmethod
    def schema(table: DeltaTable) -> pa.Schema:
        """A table's schema as Arrow."""
        return pa.schema(table.schema().to_arrow())

    @staticmethod
    def totals(table: DeltaTable) -> tuple[int, int, int]:
        """``(rows, bytes, files)`` of a table's live files."""
        actions = pa.table(table.get_add_actions(flatten=True))
        if actions.num_rows == 0:
            return 0, 0, 0
        rows = pc.sum(actions.column("num_records")).as_py() or 0
        size = pc.sum(actions.column("size_bytes")).as_py() or 0
        return int(rows), int(size), actions.num_rows

    @staticmethod
    def created(table: DeltaTable) -> datetime:
        """When a table was created."""
        return datetime.fromtimestamp((table.metadata().created_time or 0) / 1000, UTC)

    def history(self, table: DeltaTable, limit: int | None = None) -> list[DatasetVersion]:
        """The versions of a table up to the one it is at, newest first (``limit`` of them).

        Read from the commit files, each at its own version. (delta-rs's ``history`` lists the
        newest commits in storage and numbers them down from the version the table is at: once
        another writer has committed, or for a table opened at an older version, every number
        is wrong.) Commits cleaned up after a checkpoint end the history.
        """
        newest = int(table.version())
        oldest = 0 if limit is None else max(0, newest - limit + 1)
        versions = range(newest, oldest - 1, -1)
        log = self._log(table)
        try:
            if len(versions) == 1:
                infos = [_commit_info(log, newest)]
            else:
                with ThreadPoolExecutor(_LOG_READERS) as pool:
                    infos = list(pool.map(lambda v: _commit_info(log, v), versions))
        except (DeltaError, OSError, pa.ArrowException) as exc:
            raise StoreUnavailable(
                f"cannot read the history of dataset {Path(table.table_uri).name!r}: "
                f"{first_line(exc)}"
            ) from exc
        history = []
        for version, info in zip(versions, infos, strict=True):
            if info is None:
                break
            history.append(_version(version, info))
        return history

    def _log(self, table: DeltaTable) -> pafs.FileSystem:
        """The table's folder through delta-rs's object store (the same storage options)."""
        return pafs.PyFileSystem(DeltaStorageHandler(table.table_uri, self._options()))

    def transaction_version(self, name: str, app_id: str) -> int | None:
        """The last version an application committed with ``app_id`` (a Delta ``txn``)."""
        table = self.find(name)
        if table is None:
            return None
        try:
            found = table.transaction_version(app_id)
        except DeltaError as exc:
            _storage_error(name, exc)
        return None if found is None else int(found)

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        name: str,
        data: pa.RecordBatchReader,
        *,
        partition_by: list[str] | None,
        merge_schema: bool,
        row_group_rows: int,
        metadata: Mapping[str, str],
        app_transaction: tuple[str, int] | None = None,
    ) -> int:
        """Append ``data`` as one commit (creating the table if needed); the new version.

        Only the commit makes the rows visible: a failure before it leaves the table as it was.
        """
        os.environ.setdefault(*_BATCH_CHANNEL)
        write_id = uuid.uuid4().hex
        properties = CommitProperties(
            custom_metadata={**metadata, _WRITE_ID: write_id},
            app_transactions=(
                [Transaction(app_id=app_transaction[0], version=app_transaction[1])]
                if app_transaction is not None
                else None
            ),
        )
        try:
            with _streaming:
                write_deltalake(
                    self.uri(name),
                    data,
                    mode="append",
                    partition_by=partition_by or None,
                    schema_mode="merge" if merge_schema else None,
                    storage_options=self._options(),
                    writer_properties=_writer_properties(data.schema, row_group_rows),
                    commit_properties=properties,
                )
        except (DeltaError, OSError) as exc:
            _storage_error(name, exc)
        return self._version_of(name, write_id)

    # -- maintenance -----------------------------------------------------------------------

    @contextlib.contextmanager
    def maintenance(self, name: str) -> Iterator[None]:
        """Hold dataset ``name``'s maintenance lock: one compaction or vacuum at a time.

        Two compactions at once would each replace the same small files with a merged copy
        of their own (delta-rs lets both commit: rows twice over); a vacuum beside a
        compaction could delete the files it is about to commit. So both hold this lock: in
        this process, by the table's URI; across processes on one machine (a local lake),
        by an exclusive ``flock`` on a file in the table's folder. A lake on an object store
        has only the first: maintain each dataset from one place at a time. A held lock is
        a :class:`Conflict` at once, not a wait.
        """
        uri = self.uri(name)
        busy = Conflict(
            f"dataset {name!r} is being compacted or vacuumed by another call; try again "
            "when it has ended",
            name=name,
        )
        with _maintained_guard:
            if uri in _maintained:
                raise busy
            _maintained.add(uri)
        try:
            if not self.local:
                yield
                return
            path = Path(uri.removeprefix("file://")) / _MAINTENANCE_LOCK
            with path.open("a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise busy from None
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            with _maintained_guard:
                _maintained.discard(uri)

    def compact(
        self, name: str, table: DeltaTable, *, target_size: int | None, row_group_rows: int
    ) -> tuple[int, int]:
        """Rewrite the small files of dataset ``name``'s ``table`` into larger ones, as one commit.

        Files grow to about ``target_size`` bytes (default: the table's ``delta.targetFileSize``,
        or 100 MiB). ``table`` moves to the new version; with nothing to rewrite, nothing is
        committed. Returns ``(files_removed, files_added)``.
        """
        try:
            metrics = table.optimize.compact(
                target_size=target_size,
                writer_properties=_writer_properties(self.schema(table), row_group_rows),
            )
        except (DeltaError, OSError) as exc:
            _storage_error(name, exc)
        return int(metrics["numFilesRemoved"]), int(metrics["numFilesAdded"])

    def vacuum(
        self, name: str, table: DeltaTable, *, retain_hours: int, dry_run: bool, force: bool
    ) -> list[str]:
        """Delete the data files no version of the last ``retain_hours`` hours reads.

        Returns the files deleted (with ``dry_run``: that would be), relative to the table.
        Unless ``force``, delta-rs refuses a retention below the table's configured one
        (:class:`InvalidRequest`). A vacuum that deletes files commits twice (start, end).
        """
        try:
            return list(
                table.vacuum(
                    retention_hours=retain_hours,
                    dry_run=dry_run,
                    enforce_retention_duration=not force,
                )
            )
        except (DeltaError, OSError) as exc:
            if _RETENTION_REFUSED in str(exc):
                reason = first_line(exc).removeprefix("Generic error: ")
                raise InvalidRequest(
                    f"cannot vacuum dataset {name!r}: {reason} (the table is configured to keep "
                    "removed files longer; vacuum with force to do it anyway)",
                    name=name,
                ) from exc
            _storage_error(name, exc)

    def _version_of(self, name: str, write_id: str) -> int:
        """The version whose commit carries ``write_id`` (others may have committed since)."""
        table = self.open(name)
        newest = int(table.version())
        log = self._log(table)
        try:
            # Newest first: unless others committed since, the first commit read is this one.
            for version in range(newest, max(-1, newest - 100), -1):
                info = _commit_info(log, version)
                if info is None:
                    break
                if info.get(_WRITE_ID) == write_id:
                    return version
        except (DeltaError, OSError, pa.ArrowException) as exc:
            _storage_error(name, exc)
        return newest


def _writer_properties(schema: pa.Schema, row_group_rows: int) -> WriterProperties:
    # Dictionary encoding seldom pays for floating-point columns (nearly every value is
    # distinct) and costs delta-rs about a third of its write time before it gives up on it.
    no_dictionary = {
        f.name: ColumnProperties(dictionary_enabled=False)
        for f in schema
        if pa.types.is_floating(f.type)
    }
    return WriterProperties(
        max_row_group_size=row_group_rows,
        compression="SNAPPY",
        column_properties=no_dictionary or None,
    )


def _storage_error(name: str, exc: BaseException) -> NoReturn:
    message = first_line(exc)
    if isinstance(exc, TableNotFoundError):
        raise DatasetNotFound(name) from exc
    if isinstance(exc, CommitFailedError):
        raise Conflict(
            f"dataset {name!r} changed under this write ({message}); try again", name=name
        ) from exc
    if isinstance(exc, SchemaMismatchError):
        raise SchemaMismatch(name, [message]) from exc
    if isinstance(exc, DeltaProtocolError):
        raise StoreUnavailable(
            f"dataset {name!r} uses Delta features this aimesh cannot handle: {message}"
        ) from exc
    raise StoreUnavailable(f"dataset {name!r}: {message}", name=name) from exc


def _commit_info(log: pafs.FileSystem, version: int) -> dict[str, Any] | None:
    """The ``commitInfo`` of commit ``version`` (empty if it has none; ``None``: no such file)."""
    try:
        with log.open_input_stream(f"_delta_log/{version:020d}.json") as f:
            text = f.read().decode()
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if '"commitInfo"' in line:
            action = json.loads(line)
            if isinstance(action.get("commitInfo"), dict):
                return dict(action["commitInfo"])
    return {}


def _version(version: int, entry: Mapping[str, Any]) -> DatasetVersion:
    parameters = entry.get("operationParameters") or {}
    metrics = entry.get("operationMetrics") or {}
    rows = metrics.get("num_added_rows", metrics.get("numOutputRows"))
    files = metrics.get("num_added_files", metrics.get("numFiles"))
    return DatasetVersion(
        version=version,
        timestamp=datetime.fromtimestamp(int(entry.get("timestamp", 0)) / 1000, UTC),
        operation=str(entry.get("operation", "")),
        mode=str(parameters["mode"]) if "mode" in parameters else None,
        rows_added=int(rows) if rows is not None else None,
        files_added=int(files) if files is not None else None,
        metadata={
            k: str(v) for k, v in entry.items() if k.startswith(METADATA_PREFIX) and k != _WRITE_ID
        },
    )
