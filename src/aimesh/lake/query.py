"""SQL over the lake: DuckDB reading each dataset's Delta table as an Arrow dataset.

A query is refused before it runs unless it is one read-only statement (``SELECT``,
``WITH``, ``VALUES``, ``FROM``, ``DESCRIBE``...). It then runs on a fresh in-memory DuckDB
connection that is sealed from the start: no file access (so no ``COPY``, ``ATTACH``,
``read_csv('/etc/...')``), no extension installed or loaded, no Python variable readable by
name, and a locked configuration that no statement can reopen. DuckDB itself refuses what
the statement check might miss. The datasets come in one by one as DuckDB's binder asks for
them: each table it cannot find that names a dataset is registered as that Delta table's
Arrow dataset at the asked version, and the query is bound again. A timer interrupts a query
that runs past its timeout.

Queries are bounded: each may use ``memory_limit`` (past it, what cannot spill fails with
:class:`QueryTooLarge`), spills into a folder of its own under ``temp_dir`` that is removed
when it ends (DuckDB's home is that folder too: nothing is written elsewhere), and at most
``max_concurrent`` run at once; one more waits up to ``wait_s`` for a slot, then
:class:`QueryBusy`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import duckdb
import pyarrow as pa

from aimesh.errors import (
    AimeshError,
    DatasetNotFound,
    InvalidRequest,
    QueryBusy,
    QueryError,
    QueryRefused,
    QueryTimeout,
    QueryTooLarge,
    foreign_message,
)
from aimesh.lake.delta import DeltaTables, first_line
from aimesh.lake.refs import check_dataset_name
from aimesh.lake.types import QueryResult

__all__ = ["QueryCancel", "QueryEngine"]

T = TypeVar("T")
log = logging.getLogger("aimesh.lake.query")

_READ_ONLY = {duckdb.StatementType.SELECT}
_MISSING_TABLE = re.compile(r"Table with name (.+?) does not exist", re.IGNORECASE)
# More datasets than this in one query is a runaway, not a query.
_MAX_DATASETS = 64


class QueryCancel:
    """Stops one query from another thread: its client went away, nobody waits for it.

    Callable once the query runs or before (it then stops as soon as it starts); the query
    ends with :class:`InvalidRequest` ("the client went away"), its slot freed at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self.cancelled = False

    def __call__(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._con is not None:
                self._con.interrupt()

    def attach(self, con: duckdb.DuckDBPyConnection | None) -> None:
        """The connection the query runs on (``None``: it has ended)."""
        with self._lock:
            self._con = con
        self.check()

    def check(self) -> None:
        """Raise :class:`InvalidRequest` if the query was cancelled (an interrupt only stops
        a statement that runs; this stops the query between statements)."""
        if self.cancelled:
            raise InvalidRequest("the client went away; the query was stopped")


class QueryEngine:
    """Runs read-only SQL over the datasets of :class:`DeltaTables`."""

    def __init__(
        self,
        tables: DeltaTables,
        *,
        timeout_s: float | None,
        memory_limit: str = "1GB",
        max_concurrent: int = 2,
        wait_s: float = 5.0,
        temp_dir: Path | None = None,
    ) -> None:
        self.tables = tables
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self.max_concurrent = max_concurrent
        self.wait_s = wait_s
        self.temp_dir = temp_dir
        """Where each query's spill folder is made (default: the system's temp folder)."""
        self._slots = threading.BoundedSemaphore(max_concurrent)

    @staticmethod
    def check(sql: str) -> str:
        """The text of ``sql``'s one read-only statement; :class:`QueryRefused` otherwise."""
        try:
            statements = duckdb.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryError(_message(exc)) from exc
        if not statements:
            raise QueryError("the query is empty")
        if len(statements) > 1:
            raise QueryRefused(
                f"one statement at a time, please (found {len(statements)})",
                statements=len(statements),
            )
        statement = statements[0]
        if statement.type not in _READ_ONLY:
            kind = statement.type.name.replace("_", " ")
            raise QueryRefused(
                f"only read-only queries (SELECT, WITH, VALUES, DESCRIBE...) run here; "
                f"this statement is of type {kind}",
                statement=kind,
            )
        return _without_terminator(str(statement.query))

    def run(
        self,
        sql: str,
        *,
        limit: int,
        version: int | None = None,
        versions: Mapping[str, int] | None = None,
        cancel: QueryCancel | None = None,
    ) -> QueryResult:
        """At most ``limit`` rows of ``sql``'s result, and whether there were more.

        ``cancel``, called from another thread, stops the query (its client went away).
        """
        started = time.perf_counter()
        # The limit wraps the query, so DuckDB stops early; one more row tells of truncation.
        # (The newline keeps a trailing -- comment from swallowing the parenthesis.)
        text = f"SELECT * FROM (\n{self.check(sql)}\n) LIMIT {limit + 1}"
        with self._session(version, versions or {}, self.timeout_s, cancel) as session:
            relation = session.bind(text)
            table = session.execute(relation.to_arrow_table)
        truncated = table.num_rows > limit
        return QueryResult(
            table=table.slice(0, limit) if truncated else table,
            truncated=truncated,
            versions=session.read,
            elapsed_s=time.perf_counter() - started,
        )

    @contextlib.contextmanager
    def stream(
        self,
        sql: str,
        *,
        batch_rows: int,
        limit: int | None = None,
        version: int | None = None,
        versions: Mapping[str, int] | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[tuple[pa.RecordBatchReader, dict[str, int]]]:
        """The whole result (or ``limit`` rows) as a stream of batches, for big exports.

        Exports run as long as they take unless ``timeout_s`` is given.
        """
        text = self.check(sql)
        if limit is not None:
            text = f"SELECT * FROM (\n{text}\n) LIMIT {limit}"
        with self._session(version, versions or {}, timeout_s) as session:
            relation = session.bind(text)
            yield session.execute(lambda: relation.to_arrow_reader(batch_rows)), session.read

    @contextlib.contextmanager
    def _session(
        self,
        version: int | None,
        versions: Mapping[str, int],
        timeout_s: float | None,
        cancel: QueryCancel | None = None,
    ) -> Iterator[_Session]:
        if not self._slots.acquire(timeout=self.wait_s):
            raise QueryBusy(self.max_concurrent)
        try:
            with self._spill_folder() as spill, self._connect(spill) as con:
                session = _Session(self.tables, con, version, dict(versions), self.memory_limit)
                timer: threading.Timer | None = None
                if timeout_s is not None:
                    timer = threading.Timer(timeout_s, con.interrupt)
                    timer.daemon = True
                    timer.start()
                session.cancel = cancel
                try:
                    if cancel is not None:
                        cancel.attach(con)
                    yield session
                except duckdb.InterruptException as exc:
                    if cancel is not None:
                        cancel.check()
                    raise QueryTimeout(timeout_s or 0.0) from exc

                finally:
                    if cancel is not None:
                        cancel.attach(None)
                    if timer is not None:
                        timer.cancel()

        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _spill_folder(self) -> Iterator[Path]:
        """A folder of this query's own for what DuckDB spills; removed when it ends."""
        if self.temp_dir is not None:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="query-", dir=self.temp_dir))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def _connect(self, spill: Path) -> Iterator[duckdb.DuckDBPyConnection]:
        """A sealed in-memory DuckDB connection, limited and confined to ``spill``."""
        config: dict[str, str | bool | int | float | list[str]] = {
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "memory_limit": self.memory_limit,
            "temp_directory": str(spill),
            "home_directory": str(spill),
        }
        try:
            con = duckdb.connect(":memory:", config=config)
            # DuckDB would otherwise read any Python variable of this process by its name.
            con.execute("SET python_enable_replacements = false")
            con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            # Its text may name the spill folder: the log keeps it, the error does not.
            log.error("cannot start the query engine: %s", exc)
            raise QueryError(
                "cannot start the query engine (see the service log; is "
                f"lake.query_memory_limit {self.memory_limit!r} valid?)"
            ) from exc
        try:
            yield con
        finally:
            con.close()


class _Session:
    """One query's connection and the datasets registered in it so far."""

    def __init__(
        self,
        tables: DeltaTables,
        con: duckdb.DuckDBPyConnection,
        version: int | None,
        versions: dict[str, int],
        memory_limit: str,
    ) -> None:
        self.tables = tables
        self.memory_limit = memory_limit
        self.con = con
        self.version = version
        self.versions = versions
        self.read: dict[str, int] = {}
        """The version of each dataset registered."""
        self.cancel: QueryCancel | None = None

    def bind(self, text: str) -> duckdb.DuckDBPyRelation:
        """``text`` bound, with every dataset it names registered at its version."""
        for _ in range(_MAX_DATASETS + 1):
            try:
                relation = self.con.sql(text)
            except duckdb.CatalogException as exc:
                self._register(_missing_table(exc))
                continue
            except duckdb.InterruptException:
                raise
            except duckdb.Error as exc:
                raise self._translate(exc) from exc
            unread = sorted(set(self.versions) - set(self.read))
            if unread:
                raise InvalidRequest(
                    f"a version is given for {', '.join(unread)}, which the query does not "
                    f"read (it reads: {', '.join(self.read) or 'no dataset'})"
                )
            return relation
        raise QueryRefused(f"a query may read at most {_MAX_DATASETS} datasets")

    def execute(self, run: Callable[[], T]) -> T:
        """``run()``, with DuckDB's errors (but an interrupt) translated into ours."""
        if self.cancel is not None:
            self.cancel.check()
        try:
            return run()

        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: duckdb.Error) -> AimeshError:
        if isinstance(exc, duckdb.OutOfMemoryException):
            return QueryTooLarge(self.memory_limit)
        return _translate(exc)

    def _register(self, name: str) -> None:
        if name in self.read:  # registered, yet missing: not a name DuckDB can resolve
            raise QueryError(f"cannot read dataset {name!r} in this query")
        if self.version is not None and self.read:
            raise InvalidRequest(
                "--version applies to a query that reads one dataset; this one reads "
                f"{', '.join([*self.read, name])}: give a version per dataset"
            )
        number = self.versions.get(name, self.version)
        table = self.tables.open(name, number)  # DatasetNotFound, DatasetVersionNotFound
        self.con.register(name, self.tables.dataset(table))
        self.read[name] = int(table.version())


def _without_terminator(text: str) -> str:
    """``text`` without its final ``;`` (and what follows it: comments), to nest it."""
    tokens = [t for t in duckdb.tokenize(text) if t[1] != duckdb.token_type.comment]
    if tokens and tokens[-1][1] == duckdb.token_type.operator and text[tokens[-1][0]] == ";":
        return text[: tokens[-1][0]].strip()
    return text.strip()


def _missing_table(exc: duckdb.CatalogException) -> str:
    """The dataset a catalog error says is missing; any other catalog error, translated."""
    found = _MISSING_TABLE.search(str(exc))
    if found is None:
        raise _translate(exc) from exc
    name = found.group(1).strip().strip("\"'!").lower()
    try:
        check_dataset_name(name)
    except AimeshError:
        raise DatasetNotFound(name) from exc
    return name


def _message(exc: BaseException) -> str:
    return foreign_message(exc, 600, lines=4)


def _translate(exc: duckdb.Error) -> AimeshError:
    if isinstance(exc, duckdb.PermissionException):
        return QueryRefused(
            "queries read only the lake's datasets (no files, COPY, ATTACH or extensions): "
            + first_line(exc)
        )
    found = _MISSING_TABLE.search(str(exc))
    if isinstance(exc, duckdb.CatalogException) and found is not None:
        return DatasetNotFound(found.group(1).strip().strip("\"'!"))
    return QueryError(_message(exc))
