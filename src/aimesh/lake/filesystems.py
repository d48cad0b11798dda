"""Arrow's own filesystems for reading a Delta table's files, where one fits the lake.

delta-rs hands Arrow datasets a filesystem written in Python (its storage handler). Reading
through it costs the GIL on every call from Arrow's I/O threads, and Arrow releases the
Python file objects of a scan on those threads some time after the scan returned: one
released while the interpreter exits aborts the process ("terminate called without an
active exception"; seen with `aimesh lake query` on S3, after it printed its answer). So a
local lake and an S3 lake are read through Arrow's C++ ``LocalFileSystem`` and
``S3FileSystem``, which never call into Python. Writes, the log and other stores stay
with delta-rs.

Arrow must read exactly what delta-rs wrote: an S3 lake is read natively only when its
settings (the storage options over the ``AWS_*`` environment, as delta-rs takes them) are
explicit keys, region and endpoint, all of which Arrow takes too. Anything else (an option
Arrow has no match for, a role to assume, virtual-hosted addressing, a half-given key pair,
no region) is left to delta-rs, which knows it all.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

__all__ = ["native_filesystem"]

# delta-rs's S3 settings (object_store's names and aliases, any case) and the setting each
# is to Arrow. Any other setting sends the lake's reads through delta-rs.
_S3_SETTINGS = {
    "aws_access_key_id": "access_key",
    "access_key_id": "access_key",
    "aws_secret_access_key": "secret_key",
    "secret_access_key": "secret_key",
    "aws_session_token": "session_token",
    "aws_token": "session_token",
    "session_token": "session_token",
    "token": "session_token",
    "aws_region": "region",
    "region": "region",
    "aws_default_region": "default_region",
    "default_region": "default_region",
    "aws_endpoint_url": "endpoint",
    "aws_endpoint": "endpoint",
    "endpoint_url": "endpoint",
    "endpoint": "endpoint",
    "aws_allow_http": "allow_http",
    "allow_http": "allow_http",
}
_TRUTHY = frozenset({"1", "true", "on", "yes", "y"})
# delta-rs ignores the AWS_* variables it does not know (AWS_CA_BUNDLE, say, is the SDK's);
# of those it knows, these change how it addresses or signs requests, which Arrow would not
# follow.
_ENVIRONMENT_NOT_SHARED = frozenset(
    {
        "aws_virtual_hosted_style_request",
        "aws_skip_signature",
        "aws_unsigned_payload",
        "aws_s3_express",
        "aws_request_payer",
        "aws_imdsv1_fallback",
        "aws_metadata_endpoint",
        "aws_container_credentials_relative_uri",
        "aws_role_arn",
        "aws_web_identity_token_file",
    }
)


def native_filesystem(table_uri: str, options: Mapping[str, str]) -> pafs.FileSystem | None:
    """A filesystem rooted at the table's folder, or ``None`` to read through delta-rs."""
    parsed = urlparse(table_uri)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme else table_uri
        return pafs.SubTreeFileSystem(path.rstrip("/") or "/", pafs.LocalFileSystem())
    if parsed.scheme not in ("s3", "s3a"):
        return None
    arguments = _s3_arguments(options)
    if arguments is None:
        return None
    root = unquote(f"{parsed.netloc}{parsed.path}").rstrip("/")
    return pafs.SubTreeFileSystem(root, _s3(tuple(sorted(arguments.items()))))


def _s3_arguments(options: Mapping[str, str]) -> dict[str, str] | None:
    """``S3FileSystem``'s arguments for what delta-rs would use, or ``None`` if unsure."""
    given: dict[str, str] = {}
    for key, value in os.environ.items():
        if not key.startswith("AWS_"):  # as delta-rs reads it
            continue
        if key.lower() in _ENVIRONMENT_NOT_SHARED:
            return None
        if (name := _S3_SETTINGS.get(key.lower())) is not None:
            given[name] = value
    for key, value in options.items():  # the options win, as in delta-rs
        name = _S3_SETTINGS.get(key.lower())
        if name is None:
            return None
        given[name] = value
    region = given.get("region") or given.get("default_region")
    endpoint = given.get("endpoint")
    if "access_key" not in given or "secret_key" not in given or region is None:
        return None  # the credential chain or a region lookup: delta-rs's own
    arguments = {"access_key": given["access_key"], "secret_key": given["secret_key"]}
    if "session_token" in given:
        arguments["session_token"] = given["session_token"]
    arguments["region"] = region
    if endpoint is not None:
        found = urlparse(endpoint)
        if found.scheme not in ("http", "https") or not found.netloc:
            return None
        if found.scheme == "http" and given.get("allow_http", "").lower() not in _TRUTHY:
            return None  # delta-rs refuses plain HTTP without AWS_ALLOW_HTTP: let it say so
        arguments["endpoint_override"] = found.netloc + found.path.rstrip("/")
        arguments["scheme"] = found.scheme
    return arguments


@functools.lru_cache(maxsize=16)
def _s3(arguments: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    """One S3 client per set of settings, shared by every read of the process."""
    return pafs.S3FileSystem(**dict(arguments))
