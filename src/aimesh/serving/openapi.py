"""The model service's OpenAPI document: the Open Inference Protocol v2 REST routes."""

from __future__ import annotations

import json
from typing import Any

from aimesh.protocol import (
    INFER_RESPONSE_SCHEMA,
    error_responses,
    infer_request_body,
    json_content,
)

_INFER = {
    "summary": "Run inference",
    "requestBody": infer_request_body(),
    "responses": {
        "200": json_content(INFER_RESPONSE_SCHEMA, "outputs of the version that answered"),
        **error_responses(400, 404, 413, 429, 503, 504),
    },
}
_READY = {
    "200": json_content({"type": "object"}, "ready"),
    "503": json_content({"type": "object"}, "not ready"),
}
_META = {"200": json_content({"type": "object"}, "metadata"), **error_responses(404)}

_PATHS: dict[str, Any] = {
    "/v2/health/live": {"get": {"summary": "Liveness", "responses": _READY}},
    "/v2/health/ready": {"get": {"summary": "Readiness", "responses": _READY}},
    "/v2": {"get": {"summary": "Server metadata", "responses": _META}},
    "/metrics": {
        "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}
    },
}
for _prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
    _PATHS[_prefix] = {"get": {"summary": "Model metadata", "responses": _META}}
    _PATHS[f"{_prefix}/ready"] = {"get": {"summary": "Model readiness", "responses": _READY}}
    _PATHS[f"{_prefix}/infer"] = {"post": _INFER}

OPENAPI_DOCUMENT = json.dumps(
    {
        "openapi": "3.1.0",
        "info": {"title": "aimesh model service (Open Inference Protocol v2)", "version": "0.1.0"},
        "paths": _PATHS,
    }
).encode()
