"""Arrow's own filesystems for reading a Delta table's files, where one fits the lake.

delta-rs hands Arrow datasets a filesystem written in Python (its storage handler). Reading
through it costs the GIL on every call from Arrow's I/O threads, and Arrow releases the
Python file objects of a scan on those threads some time after the scan returned: one
released while the interpreter exits aborts the process ("terminate called without an
active exception"; seen with `aimesh lake query` on S3, after it printed its answer). So a
local lake and an S3 lake are read through Arrow's C++ ``LocalFileSystem`` and
``S3FileSystem``, which never call into Python. Writes, the log and other stores stay
with delta-rs.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

__all__ = ["native_filesystem"]

# delta-rs's S3 options (any case) that map onto S3FileSystem's arguments. A lake
# configured with any other option (a role to assume, a proxy...) is read through delta-rs,
# which knows them all.
_S3_OPTIONS = {
    "aws_access_key_id": "access_key",
    "aws_secret_access_key": "secret_key",
    "aws_session_token": "session_token",
    "aws_token": "session_token",
    "aws_region": "region",
    "aws_default_region": "region",
    "aws_endpoint_url": "endpoint",
    "aws_endpoint": "endpoint",
    "aws_allow_http": "allow_http",
}


def native_filesystem(table_uri: str, options: Mapping[str, str]) -> pafs.FileSystem | None:
    """A filesystem rooted at the table's folder, or ``None`` to read through delta-rs."""
    parsed = urlparse(table_uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme else table_uri
        return pafs.SubTreeFileSystem(path.rstrip("/") or "/", pafs.LocalFileSystem())
    if parsed.scheme not in ("s3", "s3a"):
        return None
    given: dict[str, str] = {}
    for key, value in options.items():
        argument = _S3_OPTIONS.get(key.lower())
        if argument is None:
            return None
        given[argument] = value
    arguments: dict[str, str] = {
        k: given[k] for k in ("access_key", "secret_key", "session_token", "region") if k in given
    }
    endpoint = given.get("endpoint")
    if endpoint is not None:
        found = urlparse(endpoint)
        if found.scheme == "http" and given.get("allow_http", "").lower() != "true":
            return None  # delta-rs refuses plain HTTP without AWS_ALLOW_HTTP: let it say so
        arguments["endpoint_override"] = found.netloc + found.path.rstrip("/")
        arguments["scheme"] = found.scheme or "https"
    filesystem = pafs.S3FileSystem(**arguments)
    return pafs.SubTreeFileSystem(f"{parsed.netloc}{parsed.path}".rstrip("/"), filesystem)
