"""Every operation of every service's OpenAPI document names the errors it can answer.

One rule for all documents (the FastAPI services', the model service's, the gateway's),
drawn from the edge every request crosses, each status documented with the one error body
(:data:`aimesh.protocol.ERROR_SCHEMA`):

- every operation: 400 (a refused ``Host`` or a request that fails its schema: the
  services answer 400 ``invalid_request`` where FastAPI would say 422);
- an operation that needs a key (its ``x-aimesh-scope`` is not ``open``): 401 (no key, an
  unknown one), 403 (a key without the scope), 429 (rate limits), 503 (a dependency the
  service cannot work without is gone, or it is full);
- a method that can carry a body (not GET, HEAD, OPTIONS): 403 (a foreign browser
  ``Origin``), 413 (too large), 415 (not JSON);
- a path with parameters: 404 (it names something that may not exist).

What only some operations answer (409, 410, 422, 500 ``artifact_tampered``, a gateway's
502 and 504) each declares with :func:`aimesh.protocol.error_responses`; a declared status
is kept as declared, given the error body when it has no content of its own.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aimesh.protocol import error_components, error_response
from aimesh.rest.callers import SCOPE_KEY
from aimesh.rest.guard import SAFE_METHODS

__all__ = ["OPERATION_METHODS", "document_errors", "statuses_of"]

OPERATION_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
"""The keys of an OpenAPI path item that are operations."""

_EVERY = (400,)
_KEYED = (401, 403, 429, 503)
_BODIED = (403, 413, 415)
_NAMED = (404,)
# FastAPI's own schemas for its 422, which these services never answer.
_FASTAPI_422 = ("HTTPValidationError", "ValidationError")


def statuses_of(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    """The error statuses every operation like this one can answer (see the module's rule)."""
    found = list(_EVERY)
    if operation.get(SCOPE_KEY) != "open":
        found += _KEYED
    if method.upper() not in SAFE_METHODS:
        found += _BODIED
    if "{" in path:
        found += _NAMED
    return sorted(set(found))


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` with every operation's error responses documented."""
    document = copy.deepcopy(document)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in OPERATION_METHODS:
                # A new operation: parts of one may be shared by others (a copy keeps that).
                item[method] = {**operation, "responses": _responses(path, method, operation)}
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in _FASTAPI_422:
        schemas.pop(name, None)
    for kind, named in error_components().items():
        components.setdefault(kind, {}).update(named)
    return document


def _responses(path: str, method: str, operation: dict[str, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = dict(operation.get("responses", {}))
    validation = responses.get("422")
    if validation is not None and any(name in json.dumps(validation) for name in _FASTAPI_422):
        del responses["422"]
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400 and "content" not in response:
            responses[status] = {**error_response(int(status)), **response}
    for code in statuses_of(path, method, operation):
        responses.setdefault(str(code), error_response(code))
    return dict(sorted(responses.items()))
