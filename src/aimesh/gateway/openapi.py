"""The gateway's one OpenAPI document: its own routes, merged with every service's under /api.

The gateway's part (OIP v2 through the gateway, async inference, ``/v2/aggregate``, health,
metrics) is fixed; each service it proxies (registry, lake, jobs, and those to come) has
its part fetched from its ``/openapi.json`` (its paths are already under ``/api/<name>``),
kept, and fetched again when the set of service instances changes. A service that cannot
be fetched is left out and tried again a few seconds later.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aimesh.protocol import (
    DEADLINE_PARAMETER,
    INFER_OK_RESPONSE,
    INFER_REQUEST_SCHEMA,
    METRICS_RESPONSE,
    error_responses,
    infer_request_body,
    json_content,
    model_paths,
)
from aimesh.rest import OPERATION_METHODS, SCOPE_KEY, document_errors

__all__ = ["MergedOpenApi", "gateway_document"]

log = logging.getLogger("aimesh.gateway")

# After a failed fetch, serve the gateway's part alone and try again this much later.
_RETRY_S = 5.0

# What a routed call can answer beyond the rule of every document: no instance (503), an
# upstream failing or too slow.
_ROUTED = (502, 503, 504)
# What the gateway adds to a service's operations: no instance, or one failing or too slow.
_PROXIED = error_responses(502, 503, 504)


_ASYNC_PARAMETERS = [
    {
        "name": "async",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
        "description": "Queue the call as a job and answer 202 at once (as Prefer: "
        "respond-async does); the answer is kept a day at /api/jobs/{id}/result.",
    },
    {
        "name": "webhook",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "format": "uri", "pattern": "^https?://"},
        "description": "With async: called (POST, the job's record, HMAC-signed) when it ends. "
        "A URL whose host resolves to a loopback, private, link-local or metadata address "
        "is refused (400 url_refused) unless jobs.webhook_allow names it.",
    },
    {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "example": "respond-async"},
        "description": "respond-async: the same as async=true.",
    },
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "maxLength": 256},
        "description": "With async: the same key again returns the first call's job.",
    },
]
_ACCEPTED = {
    "description": "Queued (async): the job's record; Location: /api/jobs/{id}",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["id", "kind", "state"],
                "properties": {
                    "id": {"type": "string"},
                    "kind": {"type": "string", "const": "inference"},
                    "state": {"type": "string"},
                },
            }
        }
    },
}


def _infer(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [DEADLINE_PARAMETER, *_ASYNC_PARAMETERS],
        "requestBody": infer_request_body(),
        "responses": {
            "200": INFER_OK_RESPONSE,
            "202": _ACCEPTED,
            **error_responses(422, *_ROUTED),
        },
    }


_AGGREGATE = {
    "summary": "Run one request on several models in parallel",
    "description": "Each model's OIP response, or its error, under its reference; "
    "`complete` is false when any model failed.",
    "parameters": [DEADLINE_PARAMETER],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    **INFER_REQUEST_SCHEMA,
                    "required": ["models", "inputs"],
                    "properties": {
                        "models": {
                            "type": "array",
                            "items": {"type": "string", "description": "NAME[@VERSION|@ALIAS]"},
                            "minItems": 1,
                            "maxItems": 32,
                        },
                        **INFER_REQUEST_SCHEMA["properties"],
                    },
                }
            }
        },
    },
    "responses": {
        "200": json_content(
            {
                "type": "object",
                "properties": {
                    "results": {"type": "object", "additionalProperties": {"type": "object"}},
                    "complete": {"type": "boolean"},
                },
            },
            "every model's answer or error",
        ),
    },
}
_READY = {
    "200": json_content({"type": "object"}, "ready"),
    "503": json_content({"type": "object"}, "not ready, or no instance serves it"),
    **error_responses(*_ROUTED),
}
_META = {
    "200": json_content({"type": "object"}, "metadata"),
    **error_responses(*_ROUTED),
}
_SERVER = {"200": json_content({"type": "object"}, "the gateway's metadata")}
_OPEN_READY = {
    "200": json_content({"type": "object"}, "ready"),
    "503": json_content({"type": "object"}, "not"),
}
_OPEN = {SCOPE_KEY: "open"}


_BREAKERS = {
    "description": "Every breaker (route, model, version) and every instance the ejection "
    "table holds, with state and counts; for_s: seconds the state lasts (open, ejected).",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "enabled": {"type": "boolean"},
                    "breakers": {"type": "array", "items": {"type": "object"}},
                    "instances": {"type": "array", "items": {"type": "object"}},
                },
                "required": ["enabled", "breakers", "instances"],
            }
        }
    },
}


def gateway_document(*, auth: bool) -> dict[str, Any]:
    """The gateway's own part of the document (with security requirements when ``auth``)."""
    secured: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}] if auth else []

    def guarded(operation: dict[str, Any]) -> dict[str, Any]:
        return {**operation, "security": secured} if auth else operation

    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Readiness: the bus and discovery",
                "responses": _OPEN_READY,
                **_OPEN,
            }
        },
        "/health/live": {"get": {"summary": "Liveness", "responses": _OPEN_READY, **_OPEN}},
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": _OPEN_READY, **_OPEN}},
        "/v2/health/ready": {"get": {"summary": "Readiness", "responses": _OPEN_READY, **_OPEN}},
        "/v2": {"get": {"summary": "Server metadata", "responses": _SERVER, **_OPEN}},
        "/v2/aggregate": {"post": guarded(_AGGREGATE)},
        "/metrics": {
            "get": guarded(
                {"summary": "Prometheus metrics", "responses": {"200": METRICS_RESPONSE}}
            )
        },
        "/breakers": {
            "get": guarded(
                {
                    "summary": "Circuit breakers and ejected instances of this gateway",
                    "responses": {"200": _BREAKERS},
                }
            )
        },
        **model_paths(
            guarded({"summary": "Model metadata", "responses": _META}),
            guarded({"summary": "Model readiness", "responses": _READY}),
            guarded(_infer("Run inference")),
        ),
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "aimesh gateway",
            "version": "0.1.0",
            "description": "Open Inference Protocol v2 for every served model, aggregation, "
            "and the platform's services under /api.",
        },
        "paths": paths,
    }
    if auth:
        document["components"] = {
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
        }
    return document_errors(document)


class MergedOpenApi:
    """The merged document, fetched again when the services behind the gateway change."""

    def __init__(self, own: dict[str, Any], *, auth: bool) -> None:
        self._own = own
        self._auth = auth
        self._rendered = json.dumps(own).encode()
        self._sources: tuple[tuple[str, str], ...] | None = ()
        """The services (and instances) the rendered document merges whole, if it does."""
        self._failed: tuple[tuple[str, str], ...] | None = None
        """A set of services one of which could not be fetched, tried again at ``_retry_at``."""
        self._retry_at = 0.0

    async def render(
        self, sources: Mapping[str, str], fetch: Callable[[str], Awaitable[bytes]]
    ) -> bytes:
        """The document; ``sources`` maps each service to its instance, ``fetch`` gets its part."""
        key = tuple(sorted(sources.items()))
        if key == self._sources or (key == self._failed and time.monotonic() < self._retry_at):
            return self._rendered
        merged = copy.deepcopy(self._own)
        complete = True
        for name, _instance in key:
            try:
                self._merge(merged, json.loads(await fetch(name)))
            except Exception as exc:  # any failure: leave that service out, retry later
                log.warning("cannot merge the OpenAPI document of %s: %s", name, exc)
                complete = False
        self._rendered = json.dumps(merged).encode()
        if complete:
            self._sources, self._failed = key, None
        else:
            self._sources = None
            self._failed, self._retry_at = key, time.monotonic() + _RETRY_S
        return self._rendered

    def _merge(self, merged: dict[str, Any], other: dict[str, Any]) -> None:
        security: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
        for path, item in other.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue  # the service's own routes (its /health) are not reachable here
            for method, operation in item.items():
                if method not in OPERATION_METHODS:
                    continue
                if self._auth:
                    operation["security"] = security
                responses = operation.setdefault("responses", {})
                for status, response in _PROXIED.items():
                    responses.setdefault(status, response)
            merged["paths"][path] = item
        schemas = other.get("components", {}).get("schemas")
        if schemas:
            merged.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
