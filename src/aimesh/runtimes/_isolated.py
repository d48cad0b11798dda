"""Inspecting a code-running artifact in a short-lived process of its own.

Unpickling a file or running a Python model file executes whatever it holds. A registry
must still read such an artifact's signature, but never in its own process (its database
connection, its secrets, its memory): :func:`inspect_isolated` runs
``python -m aimesh.runtimes._inspector FRAMEWORK PATH [TYPE ...]`` in a new session, in an
empty temporary folder, with an environment that holds only what Python needs to start
(no inherited secrets), kills its whole process group when the timeout passes, and reads
its one answer as JSON.

The child (``_inspector.py``) writes its answer to a private copy of its stdout; the
artifact's own prints go to a stream nobody reads, so they cannot corrupt the answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aimesh.errors import ArtifactError, error_from_body
from aimesh.protocol import Signature

CHILD = "aimesh.runtimes._inspector"
"""The module the inspecting process runs (kept apart: importing it does nothing)."""

MAX_ANSWER_BYTES = 1024 * 1024
"""An answer larger than this is not a signature: the inspection is refused."""

_KEPT_ENVIRONMENT = ("PATH", "PYTHONPATH", "SYSTEMROOT", "LANG", "LC_ALL", "TZ")
"""The only variables the child inherits: enough to start Python and import aimesh."""


def child_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an inspecting process: nothing beyond what Python needs."""
    source = os.environ if environ is None else environ
    env = {name: source[name] for name in _KEPT_ENVIRONMENT if name in source}
    # One thread per native pool: an inspection is small, and the machine is shared.
    env.update({"OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def inspect_isolated(
    framework: str, path: Path, *, trusted_types: Iterable[str] = (), timeout_s: float
) -> Signature:
    """The signature of a trusted code-running artifact, read in a separate process.

    The caller has already decided that the artifact is trusted. Raises the child's
    :class:`~aimesh.errors.ArtifactError` (422 ``artifact_invalid`` and its kinds) when the
    file cannot be read, and ArtifactError when the child times out, dies, or answers
    nonsense. Nothing of the file ever runs in this process.
    """
    command = [sys.executable, "-m", CHILD, framework, str(path), *trusted_types]
    with tempfile.TemporaryDirectory(prefix="aimesh-inspect-") as folder:
        answer_path = Path(folder, "answer.json")
        work = Path(folder, "work")
        work.mkdir()
        with answer_path.open("w+b") as answer:
            code = _run(command, work, answer, timeout_s, framework)
            answer.seek(0)
            raw = answer.read(MAX_ANSWER_BYTES + 1)
    return _signature(raw, code, framework)


def _run(command: Sequence[str], cwd: Path, answer: Any, timeout_s: float, framework: str) -> int:
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        stdout=answer,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so a timeout kills whatever the artifact started, too
    )
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ArtifactError(
            f"inspecting the {framework} artifact took longer than {timeout_s:g} s; "
            "refused (registry.inspect_timeout_s)",
            framework=framework,
        ) from None
    finally:
        if process.poll() is None or os.name == "posix":
            _kill_group(process)
        process.wait()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Kill the child and anything it started (its session), whether or not it ended."""
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    else:  # pragma: no cover - Windows has no process groups to kill this way
        with contextlib.suppress(OSError):
            process.kill()


def _signature(raw: bytes, exit_code: int, framework: str) -> Signature:
    invalid = ArtifactError(
        f"inspecting the {framework} artifact in its own process gave no answer "
        f"(exit code {exit_code}); the file is not a loadable {framework} model",
        framework=framework,
    )
    if len(raw) > MAX_ANSWER_BYTES:
        raise invalid
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise invalid from None
    if not isinstance(body, dict):
        raise invalid
    if "signature" in body:
        try:
            return Signature.model_validate(body["signature"])
        except ValueError:
            raise invalid from None
    code, message = body.get("code"), body.get("error")
    if not (isinstance(code, str) and isinstance(message, str)):
        raise invalid
    error = error_from_body(code, message, {"framework": framework})
    if not isinstance(error, ArtifactError):
        # The child may only refuse the file, never claim anything else about the registry.
        raise ArtifactError(message, framework=framework)
    raise error
