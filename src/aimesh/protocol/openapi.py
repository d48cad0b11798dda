"""OpenAPI schemas of the Open Inference Protocol v2 REST bodies, for every OpenAPI document
that describes OIP routes (the model service's and the gateway's), and of the error body
every service answers with (one schema, named ``Error`` in every document)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, get_args

from aimesh.protocol.names import MODEL_NAME, VERSION_REF
from aimesh.protocol.tensors import Datatype
from aimesh.resilience import DEADLINE_HEADER

TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "enum": list(get_args(Datatype))},
        "parameters": {"type": "object"},
        "data": {"type": "array", "items": {}},
    },
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string", "description": "What went wrong, for a person."},
        "code": {"type": "string", "description": "What went wrong, stable, for a program."},
        "request_id": {"type": "string", "description": "The id the service log has it under."},
        "details": {
            "description": "The error's fields; for a request that fails its schema, "
            "each problem as {loc, msg}.",
            "anyOf": [
                {"type": "object"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "loc": {"type": "array", "items": {"type": "string"}},
                            "msg": {"type": "string"},
                        },
                    },
                },
            ],
        },
    },
}
ERROR_REF: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
"""Where a document's responses name :data:`ERROR_SCHEMA` (see :func:`error_components`)."""
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": TENSOR_SCHEMA},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}
INFER_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": TENSOR_SCHEMA},
    },
}
INFER_OK_RESPONSE: dict[str, Any] = {
    "description": "outputs of the version that answered",
    "content": {
        "application/json": {"schema": INFER_RESPONSE_SCHEMA},
        # The binary tensor data extension, when outputs are asked for as binary.
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
"""An inference's 200, as the model service and the gateway answer it."""


DEADLINE_PARAMETER: dict[str, Any] = {
    "name": DEADLINE_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0, "maximum": 9_999_999_999},
    "description": "The request's deadline: the whole milliseconds its caller still waits. "
    "Each hop cuts its own timeout to it and sends what is left on (over gRPC, the call's "
    "own deadline does the same); a request whose deadline has passed is refused at once "
    "(504 `deadline_exceeded`), its model never run. Not whole milliseconds: 400 "
    "`invalid_request`.",
}
"""The header of an inference's deadline, as the model service and the gateway read it."""


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An OpenAPI response (or body) of ``schema`` as JSON."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
}


def error_response(status: int, description: str | None = None) -> dict[str, Any]:
    """The OpenAPI response of ``status`` as the JSON error body (with its headers)."""
    response = json_content(ERROR_REF, description or _describe(status))
    headers = _ERROR_HEADERS.get(status)
    if headers is not None:
        response["headers"] = headers
    return response


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these statuses, each the JSON error body (FastAPI's
    ``responses=`` takes them as they are)."""
    return {str(c): error_response(c) for c in codes}


def error_components() -> dict[str, Any]:
    """The ``components`` a document needs for :data:`ERROR_REF`."""
    return {"schemas": {"Error": ERROR_SCHEMA}}


def _describe(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    return f"{phrase}: the error body, its `code` stable"


def infer_request_body() -> dict[str, Any]:
    """The request body of an OIP infer route: JSON, or the binary tensor data extension."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "Binary tensor data extension (Inference-Header-Content-Length)",
                }
            },
        },
    }


MODEL_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The model's name.",
        "schema": {"type": "string", "pattern": MODEL_NAME.pattern},
    }
]
VERSION_PARAMETERS: list[dict[str, Any]] = [
    *MODEL_PARAMETERS,
    {
        "name": "version",
        "in": "path",
        "required": True,
        "description": "A version number, an alias or `latest`.",
        "schema": {"type": "string", "pattern": VERSION_REF.pattern},
    },
]


def model_paths(
    metadata: dict[str, Any], ready: dict[str, Any], infer: dict[str, Any]
) -> dict[str, Any]:
    """The six OIP model routes (of a model, and of one version), their path parameters
    defined once for each path, with these operations."""
    paths: dict[str, Any] = {}
    for prefix, parameters in (
        ("/v2/models/{name}", MODEL_PARAMETERS),
        ("/v2/models/{name}/versions/{version}", VERSION_PARAMETERS),
    ):
        paths[prefix] = {"parameters": parameters, "get": metadata}
        paths[f"{prefix}/ready"] = {"parameters": parameters, "get": ready}
        paths[f"{prefix}/infer"] = {"parameters": parameters, "post": infer}
    return paths


METRICS_RESPONSE: dict[str, Any] = {
    "description": "Prometheus metrics, in its text format",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}
