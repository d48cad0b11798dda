"""The model service's OpenAPI document: the Open Inference Protocol v2 REST routes.

Its errors are documented by the one rule every service's document follows
(:func:`aimesh.rest.document_errors`); the statuses only some routes answer are named here.
"""

from __future__ import annotations

import json
from typing import Any

from aimesh.protocol import (
    DEADLINE_PARAMETER,
    INFER_OK_RESPONSE,
    METRICS_RESPONSE,
    error_responses,
    infer_request_body,
    json_content,
    model_paths,
)
from aimesh.rest import SCOPE_KEY, document_errors

_INFER = {
    "summary": "Run inference",
    "parameters": [DEADLINE_PARAMETER],
    "requestBody": infer_request_body(),
    "responses": {
        "200": INFER_OK_RESPONSE,
        **error_responses(422, 504),
    },
}
_READY = {
    "200": json_content({"type": "object"}, "ready"),
    "503": json_content({"type": "object"}, "not ready"),
}
_META = {"200": json_content({"type": "object"}, "metadata")}
_OPEN = {SCOPE_KEY: "open"}

_PATHS: dict[str, Any] = {
    "/v2/health/live": {"get": {"summary": "Liveness", "responses": _READY, **_OPEN}},
    "/v2/health/ready": {"get": {"summary": "Readiness", "responses": _READY, **_OPEN}},
    "/v2": {"get": {"summary": "Server metadata", "responses": _META}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": METRICS_RESPONSE}}},
    **model_paths(
        {"summary": "Model metadata", "responses": _META},
        {"summary": "Model readiness", "responses": _READY},
        _INFER,
    ),
}

OPENAPI_DOCUMENT = json.dumps(
    document_errors(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "aimesh model service (Open Inference Protocol v2)",
                "version": "0.1.0",
            },
            "paths": _PATHS,
        }
    )
).encode()
