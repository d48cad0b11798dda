"""`aimesh lake` as a user runs it in processes: ingest, query, and the REST service."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pyarrow.parquet as pq
import pytest
from _services import run_aimesh, wait_for

from aimesh.bus import connect, list_instances


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(home: Path, nats_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    return {**env, "AIMESH_HOME": str(home), "AIMESH_BUS__URL": nats_url, "COLUMNS": "200"}


def _aimesh(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return run_aimesh(env, "lake", *args, ok=ok)


def test_ingest_list_show_query_and_errors(tmp_path: Path, nats_url: str) -> None:
    env = _env(tmp_path / "home", nats_url)
    csv = tmp_path / "tx.csv"
    csv.write_text("id,label,amount\n" + "".join(f"{i},{'ab'[i % 2]},{i}.5\n" for i in range(50)))
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"id": 50, "label": "a", "amount": 1.0, "note": "hi"}) + "\n")

    assert (
        "transactions@0  new dataset: 50 rows"
        in _aimesh(env, "ingest", "transactions", str(csv)).stdout
    )
    refused = _aimesh(env, "ingest", "transactions", str(jsonl), ok=False)
    assert refused.returncode == 1
    assert "new columns 'note'" in refused.stderr and "(schema_mismatch)" in refused.stderr
    assert "nothing was written; --evolve adds new columns" in refused.stderr
    evolved = _aimesh(env, "ingest", "transactions", str(jsonl), "--evolve").stdout
    assert "transactions@1  appended: 1 rows" in evolved and "new columns: note" in evolved

    listed = _aimesh(env, "list").stdout
    assert "transactions" in listed and "51" in listed
    shown = _aimesh(env, "show", "transactions@0").stdout
    assert "transactions@0 (latest: 1)  50 rows" in shown
    assert "amount" in shown and "double" in shown and "WRITE (Append)" in shown

    cut = _aimesh(env, "query", "select * from transactions", "--limit", "3", "--version", "0")
    assert "transactions@0" in cut.stdout
    assert "more rows exist beyond the limit of 3" in cut.stderr
    out = tmp_path / "out.parquet"
    wrote = _aimesh(env, "query", "select * from transactions", "--output", str(out)).stdout
    assert "wrote 51 rows" in wrote and pq.read_table(out).num_rows == 51
    failed = _aimesh(env, "query", "drop table transactions", ok=False)
    assert failed.returncode == 1
    assert "(query_refused)" in failed.stderr and "Traceback" not in failed.stderr


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served lake's temp folder (``TMPDIR``), where an ingest's upload waits."""
    return tmp_path_factory.mktemp("lake-uploads")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, nats_url: str, uploads: Path) -> Iterator[str]:
    """``aimesh lake serve`` on a free port with dataset ``tx`` (versions 0 and 1); its URL.

    Stopped at the end of the module: it must shut down in order, no request of the module
    having failed unexpectedly (no traceback in its log).
    """
    root = tmp_path_factory.mktemp("lake-served")
    # One query at a time, none waiting for a slot, and a timeout no test reaches.
    env = {
        **_env(root / "home", nats_url),
        "AIMESH_LAKE__MAX_CONCURRENT_QUERIES": "1",
        "AIMESH_LAKE__QUERY_WAIT_S": "0",
        "AIMESH_LAKE__QUERY_TIMEOUT_S": "3600",
        "TMPDIR": str(uploads),
    }

    csv = root / "tx.csv"
    csv.write_text("id,label\n1,a\n2,b\n")
    _aimesh(env, "ingest", "tx", str(csv))
    _aimesh(env, "ingest", "tx", str(csv))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "aimesh", "lake", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "lake never answered"
            time.sleep(0.1)
        yield base
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    # uvicorn shuts down in order, then re-raises the signal it caught.
    assert server.returncode in (0, -signal.SIGTERM), err.decode()
    assert b"Application shutdown complete" in err
    assert b"Traceback" not in err and b"internal error" not in err, err.decode()


def test_serve_answers_rest_and_announces_itself_for_discovery(served: str, nats_url: str) -> None:
    base = served
    assert [d["name"] for d in httpx.get(f"{base}/api/lake/datasets").json()] == ["tx"]
    got = httpx.post(f"{base}/api/lake/query", json={"sql": "select count(*) n from tx"})
    assert got.json()["rows"] == [[4]]

    async def lake_instances() -> list[str]:
        async with await connect(nats_url, timeout=5, name="test") as bus:
            for _ in range(100):
                found = [i.rest_url or "" for i in await list_instances(bus, "lake")]
                if base in found:
                    return found
                await asyncio.sleep(0.1)
            return []

    assert base in asyncio.run(lake_instances())


@pytest.mark.parametrize("route", ["/api/lake/datasets/tx", "/api/lake/datasets/tx/schema"])
def test_a_version_past_the_latest_is_a_404_at_once_and_the_lake_keeps_serving(
    served: str, route: str
) -> None:
    """delta-rs looks for every commit up to a version it is asked for: one such GET held the
    lake at full CPU for as long as it lived. A version past the latest is refused unasked."""
    for version in (2, 4_236_885_112_991_979, 2**63 - 1):
        got = httpx.get(served + route, params={"version": version}, timeout=30)
        assert (got.status_code, got.json()["code"]) == (404, "dataset_version_not_found")
        assert got.json()["details"] == {"name": "tx", "version": version, "latest": 1}
    too_big = httpx.get(served + route, params={"version": 2**63}, timeout=30)
    assert (too_big.status_code, too_big.json()["code"]) == (400, "invalid_request")
    old = httpx.get(served + route, params={"version": 0}, timeout=30)
    assert old.status_code == 200, old.text
    assert httpx.get(f"{served}/health", timeout=5).status_code == 200


def test_an_upload_that_is_not_utf8_is_a_4xx_and_writes_nothing(served: str) -> None:
    for body in (b"id,lab\xffel\n1,a\n", b"\xff\xfe\n", b'{"id\xff": 1}\n'):
        fmt = "jsonl" if body.startswith(b"{") else "csv"
        got = httpx.post(f"{served}/api/lake/datasets/fresh/ingest?format={fmt}", content=body)
        assert (got.status_code, got.json()["code"]) == (422, "invalid_data"), got.text
        assert "not UTF-8 text" in got.json()["error"]
    names = [d["name"] for d in httpx.get(f"{served}/api/lake/datasets").json()]
    assert names == ["tx"]


def test_a_query_whose_client_went_away_stops_and_frees_its_slot(served: str) -> None:
    """The lake runs one query at a time here, with an hour's timeout: only the stop on
    disconnect can free the slot for the next query."""
    endless = {"sql": "select sum(a.range * b.range) from range(1000000) a, range(1000000) b"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served}/api/lake/query", json=endless, timeout=2)

    def answered() -> bool:
        got = httpx.post(f"{served}/api/lake/query", json={"sql": "select 1 as one"}, timeout=10)
        return got.status_code == 200

    assert wait_for(answered, timeout=30)


def _cut_off_ingest(base: str, dataset: str, sent: bytes, uploads: Path) -> None:
    """Send an ingest's head and ``sent``, 10 MiB short; go once the upload is under way."""
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(
            f"POST /api/lake/datasets/{dataset}/ingest?format=csv HTTP/1.1\r\n"
            f"Host: {host}:{port}\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {len(sent) + 10 * 1024**2}\r\n\r\n".encode()
            + sent
        )
        assert wait_for(lambda: any(uploads.glob("aimesh-upload-*")), timeout=30)


def test_an_ingest_cut_off_mid_body_leaves_nothing_and_the_lake_serves_on(
    served: str, uploads: Path
) -> None:
    """No version, no new dataset, no upload left in the temp folder; a 500 in the log
    would fail the module's teardown."""
    rows = b"id,label\n" + b"".join(b"%d,c\n" % i for i in range(50_000))
    for dataset in ("tx", "cut"):  # an append, a first ingest
        _cut_off_ingest(served, dataset, rows, uploads)
        assert wait_for(lambda: not any(uploads.glob("aimesh-upload-*")), timeout=30)
    tx = httpx.get(f"{served}/api/lake/datasets/tx/versions", timeout=30).json()
    assert [v["version"] for v in tx] == [1, 0]
    cut = httpx.get(f"{served}/api/lake/datasets/cut", timeout=30)
    assert (cut.status_code, cut.json()["code"]) == (404, "dataset_not_found")
    got = httpx.post(f"{served}/api/lake/query", json={"sql": "select count(*) n from tx"})
    assert got.json()["rows"] == [[4]]
