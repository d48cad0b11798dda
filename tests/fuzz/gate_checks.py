"""The gate's own check, loaded by schemathesis through ``SCHEMATHESIS_HOOKS`` (see run.py)."""

from __future__ import annotations

from typing import Any

import schemathesis
from schemathesis.checks import not_a_server_error

STATE_NOT_INPUT = {(503, "no_instance")}
"""5xx answers that tell the stack's state, not a failure to handle the input: a model the
registry knows and nothing serves (the fuzzer itself moves and removes the alias the model
service follows)."""


@schemathesis.check
def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """``not_a_server_error``, but for the answers of :data:`STATE_NOT_INPUT`."""
    if response.status_code >= 500:
        try:
            code = response.json().get("code")
        except Exception:  # not JSON, or not an object: a server error like any other
            code = None
        if (response.status_code, code) in STATE_NOT_INPUT:
            return True
    result: bool | None = not_a_server_error(ctx, response, case)
    return result
