"""The inspecting process: ``python -m aimesh.runtimes._inspector FRAMEWORK PATH [TYPE ...]``.

Started by :func:`aimesh.runtimes.inspect_isolated`, never imported by aimesh itself. It
inspects one trusted artifact and writes one JSON object to stdout: ``{"signature": ...}``
or ``{"error": ..., "code": ...}``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aimesh.errors import AimeshError, ArtifactError


def main(argv: Sequence[str]) -> int:
    """Inspect ``FRAMEWORK PATH [TYPE ...]`` and write the answer as JSON to stdout."""
    # Keep the real stdout for the answer; whatever the artifact prints goes to stderr.
    answer = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    framework, path, *types = argv
    body: dict[str, Any]
    try:
        from aimesh.runtimes._frameworks import inspect_artifact

        signature = inspect_artifact(framework, Path(path), trusted=True, trusted_types=types)
        body = {"signature": signature.model_dump(mode="json")}
    except AimeshError as exc:
        body = {"error": exc.message, "code": exc.code}
    # The artifact's code can raise anything: it all means the file is not usable.
    except BaseException as exc:
        body = {
            "error": f"{Path(path).name}: reading the {framework} artifact failed: "
            f"{type(exc).__name__}",
            "code": ArtifactError.code,
        }
    answer.write(json.dumps(body))
    answer.flush()
    return 0


if __name__ == "__main__":
    # os._exit: no atexit hook or finaliser that the artifact registered runs after this.
    os._exit(main(sys.argv[1:]))
