"""The gate's own check, loaded by schemathesis through ``SCHEMATHESIS_HOOKS`` (see run.py)."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error

STATE_NOT_INPUT = {(503, "no_instance")}
"""5xx answers that tell the stack's state, not a failure to handle the input: a model the
registry knows and nothing serves (the fuzzer itself moves and removes the alias the model
service follows)."""


CALLERS_DEADLINE = (504, "deadline_exceeded")
"""The answer to a call whose own ``x-aimesh-deadline-ms`` ran out (0 ms has, on arrival):
the caller's limit reached, as gRPC's DEADLINE_EXCEEDED, documented on every infer route;
not a failure to handle the input. Only when the request set that header."""
DEADLINE_HEADER = "x-aimesh-deadline-ms"


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, but for the answers of :data:`STATE_NOT_INPUT`, and
    :data:`CALLERS_DEADLINE` to a request that set its deadline."""
    if response.status_code >= 500:
        try:
            code = response.json().get("code")
        except Exception:  # not JSON, or not an object: a server error like any other
            code = None
        if (response.status_code, code) in STATE_NOT_INPUT:
            return True
        headers = {k.lower() for k in (case.headers or {})}
        if (response.status_code, code) == CALLERS_DEADLINE and DEADLINE_HEADER in headers:
            return True
    result: bool | None = not_a_server_error(ctx, response, case)
    return result
