"""Content-addressed artifact storage: a local folder by default, any fsspec URL by config.

A blob's name is its sha256. Writes are staged, flushed to disk (the file, then on POSIX its
folder) and renamed into place, so a reader never sees half a blob, even after a crash;
every read hashes the bytes again, so a blob changed on disk after it was stored is refused
(:class:`ArtifactTampered`) rather than loaded. Storing bytes whose blob is there but
damaged replaces it: pushing the same file again is the repair.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from aimesh.errors import (
    ArtifactDigestMismatch,
    ArtifactNotFound,
    ArtifactTampered,
    ArtifactTooLarge,
    StoreUnavailable,
    foreign_message,
)
from aimesh.registry.types import ArtifactInfo, check_sha256

CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """Read an open binary file in chunks."""
    while chunk := f.read(size):
        yield chunk


def fsync_file(path: Path) -> None:
    """Flush a closed file's bytes to disk."""
    with path.open("rb") as f:
        os.fsync(f.fileno())


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be
    opened (Windows)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoredFile:
    """A file the garbage collector may consider: a blob (``sha256`` set) or staging."""

    path: str
    size: int
    age_s: float
    sha256: str | None = None


class ArtifactStore:
    """Blobs named by their sha256 under one root, local or remote."""

    def __init__(
        self, url: str, *, cache_dir: Path, storage_options: Mapping[str, Any] | None = None
    ) -> None:
        try:
            fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreUnavailable(
                f"cannot use an artifact store of scheme {url.partition(':')[0]!r}: "
                f"{foreign_message(exc)}"
            ) from exc
        self.url = url
        self._fs: Any = fs
        self._root: str = root.rstrip("/")
        self._local = isinstance(fs, LocalFileSystem)
        # Remote blobs are fetched into this cache; local blobs are read where they lie.
        self._cache = cache_dir / "artifacts"
        self._staging = Path(self._root) / "tmp" if self._local else cache_dir / "staging"

    def _blob(self, sha256: str) -> str:
        return f"{self._root}/sha256/{sha256[:2]}/{sha256}"

    def exists(self, sha256: str) -> bool:
        """Whether the store holds a blob with this sha256."""
        return bool(self._fs.exists(self._blob(check_sha256(sha256))))

    def size(self, sha256: str) -> int:
        """The size of a stored blob in bytes."""
        try:
            return int(self._fs.size(self._blob(check_sha256(sha256))))
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact with sha256 {sha256}", sha256=sha256) from exc

    def writer(self, *, max_bytes: int, expected_sha256: str | None = None) -> BlobWriter:
        """A writer that streams a new blob in; see :class:`BlobWriter`."""
        if expected_sha256 is not None:
            check_sha256(expected_sha256)
        self._staging.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self, max_bytes=max_bytes, expected_sha256=expected_sha256)

    def put(
        self, chunks: Iterable[bytes], *, max_bytes: int, expected_sha256: str | None = None
    ) -> ArtifactInfo:
        """Store a stream of bytes; refuse it whole if too large or not what was declared."""
        with self.writer(max_bytes=max_bytes, expected_sha256=expected_sha256) as writer:
            for chunk in chunks:
                writer.write(chunk)
            return writer.commit()

    def put_file(self, path: Path, *, max_bytes: int) -> ArtifactInfo:
        """Store a local file."""
        with path.open("rb") as f:
            return self.put(file_chunks(f), max_bytes=max_bytes)

    def _commit(self, staged: Path, sha256: str) -> None:
        """Move verified bytes into place, unless an intact copy is there already."""
        target = self._blob(sha256)
        if self._fs.exists(target) and self._intact(sha256):
            # Content-addressed: the same bytes are there. Touch them, so that garbage
            # collection counts this upload's grace period from now.
            self._touch(target)
            return
        # Absent, or there but damaged (bit rot, a torn write): these bytes replace it.
        if self._local:
            fsync_file(staged)
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            fsync_folder(Path(target).parent)
            return
        partial = f"{target}.{uuid.uuid4().hex}.part"
        self._fs.put_file(str(staged), partial)
        self._fs.mv(partial, target)

    def _intact(self, sha256: str) -> bool:
        try:
            self.fetch(sha256)
        except (ArtifactTampered, ArtifactNotFound):
            return False
        return True

    def _touch(self, target: str) -> None:
        if self._local:
            os.utime(target)
        # fsspec's remote stores cannot set a time; their grace runs from the first upload.

    def verify(self, sha256: str) -> ArtifactInfo:
        """The stored blob, hashed just now: :class:`ArtifactTampered` when it is damaged."""
        path = self.fetch(sha256)
        return ArtifactInfo(sha256=sha256, size=path.stat().st_size)

    def delete(self, sha256: str) -> None:
        """Remove a blob (and its cached copy); nothing happens when it is absent."""
        target = self._blob(check_sha256(sha256))
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(target)
        (self._cache / sha256).unlink(missing_ok=True)

    def stored_files(self) -> Iterator[StoredFile]:
        """Every blob and every staging file, with its age: what garbage collection sees."""
        now = time.time()
        blobs = f"{self._root}/sha256"
        if self._fs.exists(blobs):
            for path, info in self._fs.find(blobs, detail=True).items():
                name = path.rsplit("/", 1)[-1]
                sha = name if len(name) == 64 and "." not in name else None
                yield StoredFile(path, int(info.get("size") or 0), now - _mtime(info, now), sha)
        if self._staging.exists():
            for part in self._staging.iterdir():
                if part.is_file():
                    stat = part.stat()
                    yield StoredFile(str(part), stat.st_size, now - stat.st_mtime)

    def remove_file(self, path: str) -> None:
        """Remove a file :meth:`stored_files` listed."""
        if path.startswith(str(self._staging)):
            Path(path).unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(path)

    def fetch(self, sha256: str) -> Path:
        """A local path to the blob's bytes, verified against its sha256 just now."""
        check_sha256(sha256)
        actual: str | None
        if self._local:
            path = Path(self._blob(sha256))
            if not path.exists():
                raise ArtifactNotFound(f"no artifact with sha256 {sha256}", sha256=sha256)
            actual = sha256_file(path)
        else:
            path = self._cache / sha256
            actual = sha256_file(path) if path.exists() else None
            if actual != sha256:
                # A missing or damaged cache copy is fetched again from the store itself.
                self._download(sha256, path)
                actual = sha256_file(path)
        if actual != sha256:
            raise ArtifactTampered(sha256, actual or "missing")
        return path

    def _download(self, sha256: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".part")
        os.close(fd)
        try:
            self._fs.get_file(self._blob(sha256), partial)
            os.replace(partial, path)
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact with sha256 {sha256}", sha256=sha256) from exc
        finally:
            Path(partial).unlink(missing_ok=True)

    def read(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes in chunks, verified before the first chunk is given."""
        path = self.fetch(sha256)
        with path.open("rb") as f:
            yield from file_chunks(f)

    def copy_to(self, sha256: str, dest: Path) -> Path:
        """Write the verified blob to ``dest``."""
        shutil.copyfile(self.fetch(sha256), dest)
        return dest


def _mtime(info: Mapping[str, Any], default: float) -> float:
    """A listed file's modification time as epoch seconds, whatever the filesystem calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
    return default


class BlobWriter:
    """Streams one upload into a staging file, hashing and counting as it goes.

    Nothing is visible in the store until :meth:`commit`, which refuses bytes that do not
    hash to the declared sha256. Leaving the ``with`` block always removes the staging file.
    """

    def __init__(self, store: ArtifactStore, *, max_bytes: int, expected_sha256: str | None):
        self._store = store
        self._max_bytes = max_bytes
        self._expected = expected_sha256
        self._digest = hashlib.sha256()
        self._size = 0
        self._path = store._staging / f"{uuid.uuid4().hex}.part"
        self._file: BinaryIO | None = self._path.open("wb")

    def write(self, chunk: bytes) -> None:
        """Add bytes; :class:`ArtifactTooLarge` as soon as the limit is passed."""
        assert self._file is not None, "write after commit or close"
        self._size += len(chunk)
        if self._size > self._max_bytes:
            raise ArtifactTooLarge(self._size, self._max_bytes)
        self._digest.update(chunk)
        self._file.write(chunk)

    def commit(self) -> ArtifactInfo:
        """Check the digest and move the blob into place under its sha256."""
        self._close_file()
        actual = self._digest.hexdigest()
        if self._expected is not None and actual != self._expected:
            raise ArtifactDigestMismatch(self._expected, actual)
        self._store._commit(self._path, actual)
        return ArtifactInfo(sha256=actual, size=self._size)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Drop whatever was staged and not committed."""
        self._close_file()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
