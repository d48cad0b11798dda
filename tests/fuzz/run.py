"""The fuzzing gate: schemathesis against every service's OpenAPI document, on a real stack.

``make fuzz`` (a stage of its own in ``.ci/run``) runs this. It makes a fresh home with one
model (``fraud@champion``), one dataset (``tx``) and an admin API key, starts the stack with
``aimesh up`` (the embedded bus, registry, lake, jobs, one ``fraud`` model service, the
gateway), then runs ``schemathesis run`` against each service's own ``/openapi.json`` and
the gateway's merged one, with the key on every request: its coverage phase (boundary and
unusual values, every operation) and its fuzzing phase (examples that fit the schema and
examples that do not). It prints, per document, the operations, the test cases and the
failures, and the time taken (schemathesis' own report, with a ``curl`` to reproduce each
failure, follows for a document that failed); it exits 1 when an enforced check failed, 2
when the stack did not start.

Every document is held to ``no_server_error`` (:mod:`gate_checks`): whatever the input, no 5xx,
and every request answered. The conformance checks (documented status codes, content
types, response schemas) run on every document too; :data:`ENFORCED` says where they fail
the gate, and elsewhere their findings are printed as "advisory". Switch one on for a
document once it passes there. Stateful runs (links between operations) are not used: the
documents declare no links, and the time is better spent on examples.

    python tests/fuzz/run.py [--examples N] [--only registry,lake] [--seed N]

Not collected by pytest (no ``test_`` module): ``make test`` stays as long as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

KEY = "fuzz-admin-key"
HERE = Path(__file__).resolve().parent
DOCUMENTS = ("model", "lake", "jobs", "registry", "gateway")
"""In this order: the gateway's document repeats the others' routes, so it goes last."""
CHECKS = (
    "no_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
ENFORCED: dict[str, tuple[str, ...]] = {name: (*CHECKS, "schema") for name in DOCUMENTS}
"""The checks that fail the gate, by document (all of them, everywhere): ``schema`` is that
every operation of the document can be fuzzed (no "Schema Error"). A document that must
be let off one for a while is listed here with the rest, and the gate reports that check's
findings as advisory."""
EXCLUDED_PATHS = r".*/events$"
"""Not fuzzed: a job's events stream lasts as long as the job, and the stack runs no worker
(fuzzed jobs never end), so every call would last the request timeout. The jobs tests
cover it."""


@dataclass
class Report:
    """What fuzzing one document found, from schemathesis' JSON report."""

    document: str
    operations: int = 0
    cases: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    advisory: list[str] = field(default_factory=list)
    output: str = ""


# -- the stack --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _aimesh(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "aimesh", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"aimesh {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def _seed(folder: Path, env: dict[str, str]) -> None:
    """The model and the dataset the stack starts with."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(200, 4))
    model = folder / "fraud.skops"
    sio.dump(LogisticRegression().fit(x, x[:, 0] > 0), model)
    _aimesh(env, "models", "push", "fraud", str(model), "--alias", "champion")
    csv = folder / "tx.csv"
    csv.write_text("id,label,amount\n" + "".join(f"{i},{'ab'[i % 2]},{i}.5\n" for i in range(20)))
    for _ in range(2):  # versions 0 and 1
        _aimesh(env, "lake", "ingest", "tx", str(csv))


@contextlib.contextmanager
def stack(folder: Path) -> Iterator[dict[str, str]]:
    """``aimesh up`` on a fresh home in ``folder``: the REST URL of each document's service."""
    project = folder / "aimesh.yaml"
    sha = hashlib.sha256(KEY.encode()).hexdigest()
    project.write_text(
        yaml.safe_dump(
            {
                "home": str(folder / "home"),
                "auth": {"keys": [{"name": "fuzz", "sha256": sha, "scopes": ["admin"]}]},
                "registry": {"port": _free_port()},
                "lake": {"port": _free_port()},
                "jobs": {"port": _free_port()},
                "gateway": {"port": _free_port(), "grpc_port": _free_port()},
                "serving": {"drain_timeout_s": 2},
                "services": {
                    "registry": True,
                    "lake": True,
                    "jobs": True,
                    "gateway": True,
                    "workers": [],
                    "models": [{"ref": "fraud@champion", "replicas": 1}],
                },
            }
        )
    )
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIMESH_")}
    env = {**inherited, "AIMESH_CONFIG": str(project), "COLUMNS": "200"}
    try:
        _seed(folder, env)
        _aimesh(env, "up", "--detach", "-f", str(project))
        status = json.loads(_aimesh(env, "status", "--json", "-f", str(project)))
        urls = {p["process"]["kind"]: p["process"]["rest_url"] for p in status["processes"]}
        yield {name: urls[name] for name in DOCUMENTS}
    finally:
        with contextlib.suppress(Exception):
            _aimesh(env, "down", "--bus", "-f", str(project), timeout=120)


# -- fuzzing ----------------------------------------------------------------------------------


def _check_of_code() -> dict[str, str]:
    """Each schemathesis failure code (``ST101``...) and the check that reports it."""
    import schemathesis.openapi.checks  # noqa: F401  (defines the OpenAPI failures)
    from schemathesis.core.failures import Failure

    found: dict[str, str] = {}
    pending: list[type[Failure]] = [Failure]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.checks:
            found[cls.code] = cls.checks[0]
    found["ST101"] = "no_server_error"  # ours reports not_a_server_error's failure
    return found


def fuzz(name: str, base: str, args: argparse.Namespace, folder: Path) -> Report:
    """``schemathesis run`` on ``base``/openapi.json; its JSON report, read."""
    report_file = folder / f"{name}.json"
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "gate_checks", "PYTHONPATH": pythonpath}
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run", f"{base}/openapi.json",
        "--header", f"X-API-Key: {KEY}",
        "--checks", ",".join(CHECKS),
        "--continue-on-failure",  # an advisory failure must not hide a server error
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(args.examples),
        "--seed", str(args.seed),
        "--request-timeout", "30",
        "--exclude-path-regex", EXCLUDED_PATHS,
        "--warnings", "off",
        "--no-color",
        "--report", "json", "--report-json-path", str(report_file),
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.max_time)
    except subprocess.TimeoutExpired as exc:
        report = Report(name, seconds=time.monotonic() - started, output=str(exc.output or ""))
        report.failed.append(f"schemathesis did not finish within {args.max_time} s")
        return report
    report = Report(name, seconds=time.monotonic() - started, output=done.stdout + done.stderr)
    try:
        found: dict[str, Any] = json.loads(report_file.read_text())
    except (OSError, ValueError):
        report.failed.append(f"schemathesis did not finish (exit {done.returncode})")
        return report
    report.operations = found["operations"]["tested"]
    report.cases = found["test_cases"]["generated"]
    enforced = set(ENFORCED.get(name, ("no_server_error",)))
    checks = _check_of_code()
    for failure in found["failures"]:
        check = checks.get(failure["code"], failure["code"])
        line = f"{check}: {failure['title']} ({failure['count']}) on " + ", ".join(
            failure["operations"]
        )
        (report.failed if check in enforced else report.advisory).append(line)
    for error in found["errors"]:  # an operation with no usable schema, or no answer
        check = "schema" if error.get("title") == "Schema Error" else "no_server_error"
        line = f"{check}: {error.get('title')} ({error.get('count')})"
        (report.failed if check in enforced else report.advisory).append(line)
    return report


def _print(report: Report) -> None:
    gate = ", ".join(ENFORCED.get(report.document, ()))
    print(
        f"\n== {report.document}: {report.operations} operations, {report.cases} test cases, "
        f"{len(report.failed)} failures, {len(report.advisory)} advisory, "
        f"{report.seconds:.0f} s (enforced: {gate})"
    )
    for line in report.failed:
        print(f"  FAILED {line}")
    for line in report.advisory:
        print(f"  advisory {line}")
    if report.failed:
        print("\n".join("  | " + line for line in report.output.splitlines()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--examples", type=int, default=50, help="Most examples per operation.")
    parser.add_argument("--seed", type=int, default=1, help="The same seed, the same requests.")
    parser.add_argument("--max-time", type=int, default=300, help="Seconds per document, at most.")

    parser.add_argument("--only", default="", help="Comma-separated documents (default: all).")
    args = parser.parse_args(argv)
    # Stopped by CI: unwind, so that the stack is taken down (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    chosen = [d for d in DOCUMENTS if not args.only or d in args.only.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aimesh-fuzz-") as tmp:
        folder = Path(tmp)
        services = stack(folder)
        try:
            urls = services.__enter__()
        except Exception as exc:
            print(f"fuzz: the stack did not start: {exc}", file=sys.stderr)
            return 2
        try:
            print(f"fuzz: stack up in {time.monotonic() - started:.0f} s", flush=True)
            reports = []
            for name in chosen:
                reports.append(fuzz(name, urls[name], args, folder))
                _print(reports[-1])
                sys.stdout.flush()
        finally:
            services.__exit__(None, None, None)
    failed = sum(len(r.failed) for r in reports)
    print(
        f"\nfuzz: {len(reports)} documents, {sum(r.operations for r in reports)} operations, "
        f"{sum(r.cases for r in reports)} test cases, {failed} failures, "
        f"{time.monotonic() - started:.0f} s in all"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
