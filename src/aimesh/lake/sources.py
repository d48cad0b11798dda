"""Files to ingest: find them, tell their format, and read them as Arrow in bounded chunks.

Memory stays bounded by the chunk, never the file: CSV and JSON lines are read a block of
``chunk_bytes`` at a time (types are inferred from the first block, then fixed); Parquet a
row group at a time in batches of ``chunk_rows``; a JSON array ``chunk_rows`` elements at a
time (as Python objects first, so budget several times the Arrow size; prefer JSON lines for
big files). When the dataset exists, its column types are given to the readers, so that the
text of every file is parsed as the table's types rather than guessed again.
"""

from __future__ import annotations

import glob
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from aimesh.errors import InvalidData, InvalidRequest, SchemaMismatch, foreign_message
from aimesh.lake._jsonarray import iter_json_array
from aimesh.lake.schema import conform, plan_append
from aimesh.lake.types import SourceFormat

__all__ = ["FORMATS", "Source", "SourceFile", "detect_format", "find_sources", "open_source"]

FORMATS: dict[str, SourceFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
"""File extensions ingest knows, and their formats."""

_BY_NAME: dict[str, SourceFormat] = {f: f for f in FORMATS.values()}
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_MAX_JSON_ELEMENT = 64 * 1024**2


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to read."""

    path: Path
    size: int

    @property
    def compression(self) -> str | None:
        """The codec of a compressed text file (``x.csv.gz``), else ``None``."""
        return _COMPRESSION.get(self.path.suffix.lower())

    @property
    def extension(self) -> str:
        """The extension that names the format, under any compression suffix."""
        path = self.path.with_suffix("") if self.compression else self.path
        return path.suffix.lower()


def find_sources(sources: Sequence[str | Path]) -> list[SourceFile]:
    """The files named by ``sources``: files, folders (their data files, recursively), globs."""
    found: dict[Path, SourceFile] = {}
    for source in sources:
        for path in _expand(str(source)):
            found.setdefault(path, SourceFile(path, path.stat().st_size))
    if not found:
        raise InvalidRequest("no source files given")
    return list(found.values())


def _expand(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _is_data_file(p, path))
        if not files:
            raise InvalidRequest(f"folder {source} holds no data files ({_known()})")
        return files
    if glob.has_magic(source):
        matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        for folder in (p for p in matches if p.is_dir()):
            files.extend(_expand(str(folder)))
        if not files:
            raise InvalidRequest(f"no files match {source}")
        return files
    raise InvalidRequest(f"no such file or folder: {source}")


def _is_data_file(path: Path, root: Path) -> bool:
    # Hidden files and Spark/Hadoop markers (_SUCCESS, .crc) are not data.
    if any(part.startswith((".", "_")) for part in path.relative_to(root).parts):
        return False
    return SourceFile(path, 0).extension in FORMATS


def _known() -> str:
    return ", ".join(sorted(FORMATS))


def detect_format(files: Sequence[SourceFile], fmt: str | None = None) -> SourceFormat:
    """The one format of ``files``: ``fmt`` if given, else by extension (all must agree)."""
    if fmt is not None:
        chosen = _BY_NAME.get(fmt)
        if chosen is None:
            raise InvalidRequest(f"unknown format {fmt!r}: use csv, parquet, json or jsonl")
        return chosen
    formats = {FORMATS.get(f.extension) for f in files}
    if None in formats:
        odd = next(f for f in files if f.extension not in FORMATS)
        raise InvalidRequest(
            f"cannot tell the format of {odd.path.name} by its extension ({_known()}); "
            "give it with --format"
        )
    if len(formats) > 1:
        raise InvalidRequest(
            f"the files mix formats ({', '.join(sorted(str(f) for f in formats))}); "
            "ingest each format separately"
        )
    only = formats.pop()
    assert only is not None
    return only


class _Progress:
    """Bytes read so far across all files, reported to a callback."""

    def __init__(self, report: Callable[[int], None] | None) -> None:
        self._report = report
        self.base = 0

    def at(self, position: int) -> None:
        if self._report is not None:
            self._report(self.base + position)

    def done(self, file: SourceFile) -> None:
        self.base += file.size
        self.at(0)


@dataclass
class Source:
    """Files opened for reading: their schema (known before any batch) and their batches."""

    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    files: list[SourceFile]

    @property
    def total_bytes(self) -> int:
        """The size of every file, for a progress bar."""
        return sum(f.size for f in self.files)


def open_source(
    files: Sequence[SourceFile],
    fmt: SourceFormat,
    *,
    dataset: str,
    types: pa.Schema | None,
    chunk_rows: int,
    chunk_bytes: int,
    on_bytes: Callable[[int], None] | None = None,
) -> Source:
    """Open ``files`` as one stream of batches; the first file fixes the schema of the rest.

    ``types`` (the dataset's schema, if it exists) fixes the type of each column it names.
    """
    progress = _Progress(on_bytes)
    reader = _Reader(fmt, chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, dataset=dataset)
    reader.typed_by_dataset = types is not None
    first, *rest = files
    schema, batches = reader.open(first, types, progress)
    fixed = _merge(types, schema)

    def everything() -> Iterator[pa.RecordBatch]:
        yield from batches
        progress.done(first)
        for file in rest:
            file_schema, more = reader.open(file, fixed, progress)
            try:
                plan_append(dataset, schema, file_schema, evolve=False)
            except SchemaMismatch as exc:
                raise SchemaMismatch(
                    dataset,
                    [
                        f"{file.path.name} differs from {first.path.name}: " + p
                        for p in exc.problems
                    ],
                ) from exc
            for batch in more:
                yield conform(batch, schema, dataset)
            progress.done(file)

    return Source(schema, everything(), list(files))


def _merge(types: pa.Schema | None, schema: pa.Schema) -> pa.Schema:
    """The types to impose on later files: the dataset's, then what the first file showed."""
    if types is None:
        return schema
    known = set(types.names)
    return pa.schema([*types, *(f for f in schema if f.name not in known)])


class _Reader:
    """Opens one file of one format as ``(schema, batches)``."""

    def __init__(self, fmt: SourceFormat, *, chunk_rows: int, chunk_bytes: int, dataset: str):
        self.fmt = fmt
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_bytes
        self.dataset = dataset
        self.typed_by_dataset = False
        """Whether column types come from the existing dataset (a bad value: a mismatch)."""

    def invalid(self, file: SourceFile, exc: BaseException) -> InvalidData | SchemaMismatch:
        """``exc`` from reading ``file``, as the error to raise."""
        return _invalid(file, exc, dataset=self.dataset, typed_by_dataset=self.typed_by_dataset)

    def open(
        self, file: SourceFile, types: pa.Schema | None, progress: _Progress
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        try:
            if self.fmt == "parquet":
                return self._parquet(file, progress)
            raw = pa.OSFile(str(file.path))
            stream: Any = raw
            if file.compression is not None:
                stream = pa.CompressedInputStream(raw, file.compression)
            if self.fmt == "csv":
                opened = self._csv(file, stream, raw, types, progress)
            elif self.fmt == "json" and _starts_array(file):
                opened = self._json_array(file, stream, raw, types, progress)
            else:
                opened = self._json_lines(file, stream, raw, types, progress)
            # Arrow decodes column names only when asked: a name that is not UTF-8 fails here.
            opened[0].names  # noqa: B018
            return opened
        except (
            pa.ArrowInvalid,
            pa.ArrowNotImplementedError,
            pa.ArrowTypeError,
            TypeError,
            OverflowError,
            UnicodeDecodeError,
        ) as exc:
            raise self.invalid(file, exc) from exc
        except OSError as exc:
            raise InvalidData(f"cannot read {file.path.name}: {foreign_message(exc)}") from exc

    def _batches(
        self,
        file: SourceFile,
        reader: pa.RecordBatchReader,
        raw: pa.NativeFile,
        progress: _Progress,
    ) -> Iterator[pa.RecordBatch]:
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                except (
                    pa.ArrowInvalid,
                    pa.ArrowNotImplementedError,
                    pa.ArrowTypeError,
                    UnicodeDecodeError,  # column names (values that are not UTF-8 are binary)
                ) as exc:
                    raise self.invalid(file, exc) from exc
                progress.at(_position(raw, file))
                yield batch
        finally:
            raw.close()

    def _csv(
        self,
        file: SourceFile,
        stream: Any,
        raw: pa.NativeFile,
        types: pa.Schema | None,
        progress: _Progress,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        parse = pacsv.ParseOptions(delimiter="\t" if file.extension == ".tsv" else ",")
        convert = pacsv.ConvertOptions(
            column_types={f.name: f.type for f in types} if types is not None else None
        )
        read = pacsv.ReadOptions(block_size=self.chunk_bytes)
        reader = pacsv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        )
        return reader.schema, self._batches(file, reader, raw, progress)

    def _json_lines(
        self,
        file: SourceFile,
        stream: Any,
        raw: pa.NativeFile,
        types: pa.Schema | None,
        progress: _Progress,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        parse = pajson.ParseOptions(
            explicit_schema=types,
            unexpected_field_behavior="infer",
            # A .json file may hold pretty-printed objects; JSON lines never do (and parse
            # faster for it).
            newlines_in_values=self.fmt == "json",
        )
        read = pajson.ReadOptions(block_size=self.chunk_bytes)
        reader = pajson.open_json(stream, read_options=read, parse_options=parse)
        return reader.schema, self._batches(file, reader, raw, progress)

    def _parquet(
        self, file: SourceFile, progress: _Progress
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        # pre_buffer=False: read one row group at a time, not the file's column chunks at once.
        parquet = pq.ParquetFile(str(file.path), pre_buffer=False)
        total = max(parquet.metadata.num_rows, 1)

        def batches() -> Iterator[pa.RecordBatch]:
            done = 0
            try:
                for batch in parquet.iter_batches(batch_size=self.chunk_rows):
                    done += batch.num_rows
                    progress.at(file.size * done // total)
                    yield batch
            except (pa.ArrowInvalid, OSError) as exc:
                raise self.invalid(file, exc) from exc
            finally:
                parquet.close()

        return parquet.schema_arrow, batches()

    def _json_array(
        self,
        file: SourceFile,
        stream: Any,
        raw: pa.NativeFile,
        types: pa.Schema | None,
        progress: _Progress,
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        elements = iter_json_array(
            stream,
            read_size=self.chunk_bytes,
            max_element_bytes=_MAX_JSON_ELEMENT,
            name=file.path.name,
        )
        chunks = _chunked(elements, self.chunk_rows, file)
        first = next(chunks, [])
        keys = _keys(first)
        known = {f.name: f for f in types} if types is not None else {}
        extra = [k for k in keys if k not in known]
        inferred = _from_rows(first, None).select(extra).schema if extra else pa.schema([])
        schema = pa.schema([*(types or []), *inferred])
        allowed = set(schema.names)

        def batches() -> Iterator[pa.RecordBatch]:
            for rows in itertools.chain([first] if first else [], chunks):
                unknown = _keys(rows) - allowed
                if unknown:
                    raise InvalidData(
                        f"{file.path.name}: key(s) {', '.join(sorted(unknown))} first appear "
                        f"after the first {self.chunk_rows} elements; list every key in the "
                        "first elements, or use JSON lines"
                    )
                yield from self._rows_to_batches(file, rows, schema)
                progress.at(_position(raw, file))

        return schema, batches()

    def _rows_to_batches(
        self, file: SourceFile, rows: list[dict[str, Any]], schema: pa.Schema
    ) -> list[pa.RecordBatch]:
        try:
            batches: list[pa.RecordBatch] = _from_rows(rows, schema).to_batches()
            return batches
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as exc:
            raise self.invalid(file, exc) from exc


def _chunked(
    elements: Iterator[Any], size: int, file: SourceFile
) -> Iterator[list[dict[str, Any]]]:
    while True:
        chunk = list(itertools.islice(elements, size))
        if not chunk:
            return
        bad = next((e for e in chunk if not isinstance(e, dict)), None)
        if bad is not None:
            raise InvalidData(
                f"{file.path.name}: every element must be a JSON object (one row), "
                f"found {type(bad).__name__}"
            )
        yield chunk


def _keys(rows: list[dict[str, Any]]) -> set[str]:
    found: set[str] = set()
    for row in rows:
        found.update(row)
    return found


def _from_rows(rows: list[dict[str, Any]], schema: pa.Schema | None) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def _position(raw: pa.NativeFile, file: SourceFile) -> int:
    """How far into ``file`` reading has got (a reader closes the file once it has it all)."""
    return file.size if raw.closed else int(raw.tell())


def _starts_array(file: SourceFile) -> bool:
    """Whether a ``.json`` file holds one array (``[...]``) rather than objects one a line."""
    if file.compression is not None:
        with pa.CompressedInputStream(pa.OSFile(str(file.path)), file.compression) as stream:
            head = stream.read(4096)
    else:
        with file.path.open("rb") as f:
            head = f.read(4096)
    return bytes(head).lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"["


def _invalid(
    file: SourceFile, exc: BaseException, *, dataset: str = "", typed_by_dataset: bool = False
) -> InvalidData | SchemaMismatch:
    """A reader's error as ours: a value that fits no column type of the dataset is a mismatch."""
    if isinstance(exc, UnicodeDecodeError):
        return InvalidData(f"{file.path.name}: not UTF-8 text ({exc.reason})", file=file.path.name)
    message = foreign_message(exc)
    conversion = any(w in message.lower() for w in ("conversion", "convert", "truncated"))
    if conversion and typed_by_dataset:
        return SchemaMismatch(dataset, [f"{file.path.name}: {message}"])
    hint = ""
    if conversion:
        hint = (
            " (column types are inferred from the first block of the first file; a later "
            "value that does not fit them stops the ingest and nothing is written)"
        )
    return InvalidData(f"cannot read {file.path.name}: {message}{hint}", file=file.path.name)
