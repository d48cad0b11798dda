"""Which filesystem reads a table's files: Arrow's own where it fits the lake, else delta-rs."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from aimesh.lake.delta import missing_file
from aimesh.lake.filesystems import native_filesystem

S3_KEYS = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
    "AWS_ALLOW_HTTP": "true",
    "AWS_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "key",
    "AWS_SECRET_ACCESS_KEY": "secret",
}


def test_a_local_table_is_read_through_arrows_local_filesystem(tmp_path: Path) -> None:
    (tmp_path / "tx").mkdir()
    (tmp_path / "tx" / "p=a%20b").mkdir()
    (tmp_path / "tx" / "p=a%20b" / "f.txt").write_text("x")

    found = native_filesystem((tmp_path / "tx").as_uri() + "/", {})

    assert isinstance(found, pafs.SubTreeFileSystem)
    assert isinstance(found.base_fs, pafs.LocalFileSystem)
    # delta-rs names partition folders percent-encoded, on disk and in its log alike
    assert found.open_input_file("p=a%20b/f.txt").read() == b"x"


@pytest.fixture
def no_aws_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ``AWS_*`` variables: delta-rs (and so native_filesystem) would read them."""
    for key in list(os.environ):
        if key.upper().startswith("AWS_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_an_s3_table_with_plain_keys_is_read_through_arrows_s3_filesystem(
    no_aws_environment: pytest.MonkeyPatch,
) -> None:
    found = native_filesystem(
        "s3://bucket/my%20lake/tx/", {k.lower(): v for k, v in S3_KEYS.items()}
    )

    assert isinstance(found, pafs.SubTreeFileSystem)
    assert found.base_path == "bucket/my lake/tx/"  # delta-rs's URI is percent-encoded
    s3 = found.base_fs
    assert isinstance(s3, pafs.S3FileSystem)
    assert s3.region == "eu-west-1"


def test_s3_settings_in_the_environment_count_as_delta_rs_counts_them(
    no_aws_environment: pytest.MonkeyPatch,
) -> None:
    no_aws_environment.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    no_aws_environment.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    options = {"AWS_ACCESS_KEY_ID": "key", "region": "eu-west-1", "allow_http": "1"}

    found = native_filesystem("s3://bucket/lake/tx", options)

    assert isinstance(found, pafs.SubTreeFileSystem)
    assert isinstance(found.base_fs, pafs.S3FileSystem)
    no_aws_environment.setenv("AWS_CA_BUNDLE", "/etc/ssl/ca.pem")  # not delta-rs's: ignored
    no_aws_environment.setenv("REGION", "elsewhere")  # not AWS_: ignored, as by delta-rs
    assert native_filesystem("s3://bucket/lake/tx", options) is not None
    # a setting that changes how delta-rs addresses the bucket, which Arrow would not follow
    no_aws_environment.setenv("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true")
    assert native_filesystem("s3://bucket/lake/tx", options) is None


@pytest.mark.parametrize(
    ("uri", "options"),
    [
        ("gs://bucket/lake/tx", {}),
        ("az://container/lake/tx", {}),
        ("s3://bucket/lake/tx", {**S3_KEYS, "AWS_ROLE_ARN": "arn:aws:iam::1:role/r"}),
        ("s3://bucket/lake/tx", {**S3_KEYS, "AWS_ALLOW_HTTP": "false"}),
        ("s3://bucket/lake/tx", {**S3_KEYS, "AWS_ENDPOINT_URL": "127.0.0.1:9000"}),
        ("s3://bucket/lake/tx", {**S3_KEYS, "AWS_ENDPOINT_URL": "localhost:9000"}),
        ("s3://bucket/lake/tx", {k: v for k, v in S3_KEYS.items() if "SECRET" not in k}),
        ("s3://bucket/lake/tx", {k: v for k, v in S3_KEYS.items() if "REGION" not in k}),
        ("s3://bucket/lake/tx", {}),  # the credential chain: delta-rs's own
    ],
)
def test_other_stores_and_settings_arrow_would_not_share_stay_with_delta_rs(
    uri: str, options: dict[str, str], no_aws_environment: pytest.MonkeyPatch
) -> None:
    assert native_filesystem(uri, options) is None


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            "Generic LocalFileSystem error: Object at location /lake/tx/f.parquet not found",
            "/lake/tx/f.parquet",
        ),
        (
            "Failed to open local file '/lake/tx/f.parquet'. Detail: [errno 2] No such file",
            "/lake/tx/f.parquet",
        ),
        (
            "IOError: Path does not exist 'bucket/lake/tx/f.parquet'. Detail: [errno 2] No such",
            "bucket/lake/tx/f.parquet",
        ),
    ],
)
def test_a_missing_data_file_is_recognised_in_each_readers_words(text: str, path: str) -> None:
    assert missing_file(FileNotFoundError(text)) == ("tx", path)


def test_a_file_that_cannot_be_opened_for_another_reason_is_not_missing() -> None:
    denied = "Failed to open local file '/lake/tx/part-1.parquet'. Detail: [errno 13] Permission"

    assert missing_file(pa.ArrowIOError(denied)) is None
