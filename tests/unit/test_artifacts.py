"""The content-addressed artifact store: round trips, limits, corruption and tampering."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from aimesh.errors import (
    ArtifactDigestMismatch,
    ArtifactNotFound,
    ArtifactTampered,
    ArtifactTooLarge,
    InvalidName,
)
from aimesh.registry import ArtifactStore


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"), cache_dir=tmp_path / "cache")


def _stored_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file())


def test_round_trip_is_addressed_by_sha256(artifacts: ArtifactStore) -> None:
    data = b"model bytes" * 1000
    info = artifacts.put([data[:500], data[500:]], max_bytes=10**6)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert artifacts.exists(info.sha256) and artifacts.size(info.sha256) == len(data)
    assert b"".join(artifacts.read(info.sha256)) == data
    assert artifacts.fetch(info.sha256).read_bytes() == data


def test_same_bytes_are_stored_once(artifacts: ArtifactStore, tmp_path: Path) -> None:
    a = artifacts.put([b"x"], max_bytes=10)
    b = artifacts.put([b"x"], max_bytes=10)
    assert a == b
    assert len(_stored_files(tmp_path)) == 1


def test_too_large_upload_leaves_nothing(artifacts: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactTooLarge) as info:
        artifacts.put([b"x" * 600, b"x" * 600], max_bytes=1000)
    assert info.value.limit == 1000
    assert _stored_files(tmp_path) == []


def test_corrupted_upload_is_refused_and_leaves_nothing(
    artifacts: ArtifactStore, tmp_path: Path
) -> None:
    declared = hashlib.sha256(b"what the client meant").hexdigest()
    with pytest.raises(ArtifactDigestMismatch):
        artifacts.put([b"what arrived"], max_bytes=100, expected_sha256=declared)
    assert _stored_files(tmp_path) == []
    assert not artifacts.exists(declared)


def test_tampered_blob_is_refused_on_every_read(artifacts: ArtifactStore) -> None:
    info = artifacts.put([b"honest model"], max_bytes=100)
    path = artifacts.fetch(info.sha256)
    path.write_bytes(b"evil model!!")
    with pytest.raises(ArtifactTampered, match="modified"):
        artifacts.fetch(info.sha256)
    with pytest.raises(ArtifactTampered):
        b"".join(artifacts.read(info.sha256))


def test_missing_and_malformed_digests(artifacts: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound):
        artifacts.fetch("0" * 64)
    with pytest.raises(InvalidName):
        artifacts.fetch("../../etc/passwd")


def test_fsspec_memory_store_goes_through_the_cache(tmp_path: Path) -> None:
    # A non-local fsspec filesystem: blobs are downloaded into the cache and verified there.
    remote = ArtifactStore("memory://aimesh-test/artifacts", cache_dir=tmp_path / "cache")
    info = remote.put([b"remote bytes"], max_bytes=100)
    local = remote.fetch(info.sha256)
    assert local.parent == tmp_path / "cache" / "artifacts"
    assert local.read_bytes() == b"remote bytes"
    local.write_bytes(b"changed")
    assert remote.fetch(info.sha256).read_bytes() == b"remote bytes"  # the cache heals
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe(f"/aimesh-test/artifacts/sha256/{info.sha256[:2]}/{info.sha256}", b"tampered")
    local.unlink()
    with pytest.raises(ArtifactTampered):
        remote.fetch(info.sha256)
