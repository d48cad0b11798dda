"""The model service's OpenAPI document: the Open Inference Protocol v2 REST routes."""

from __future__ import annotations

import json
from typing import Any

_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                "UINT64", "FP16", "FP32", "FP64", "BYTES",
            ],
        },
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}},
    },
}  # fmt: skip
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ERROR, "error with a stable code") for c in codes}


_INFER = {
    "summary": "Run inference",
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor data extension (Inference-Header-Content-Length)",
            },
        },
    },
    "responses": {
        "200": _json(
            {
                "type": "object",
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "outputs": {"type": "array", "items": _TENSOR},
                },
            },
            "outputs of the version that answered",
        ),
        **_errors(400, 404, 413, 429, 503, 504),
    },
}
_READY = {"200": _json({"type": "object"}, "ready"), "503": _json({"type": "object"}, "not ready")}
_META = {"200": _json({"type": "object"}, "metadata"), **_errors(404)}

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

SWAGGER_PAGE = b"""<!doctype html>
<html><head><title>aimesh model service</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""
