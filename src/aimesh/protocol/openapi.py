"""OpenAPI schemas of the Open Inference Protocol v2 REST bodies, for every OpenAPI document
that describes OIP routes (the model service's and the gateway's)."""

from __future__ import annotations

from typing import Any, get_args

from aimesh.protocol.tensors import Datatype

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
        "error": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": "string", "description": "The id the service log has it under."},
        "details": {"type": "object"},
    },
}
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


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An OpenAPI response (or body) of ``schema`` as JSON."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_responses(*codes: int) -> dict[str, Any]:
    """OpenAPI responses for these statuses, each the JSON error body."""
    return {str(c): json_content(ERROR_SCHEMA, "error with a stable code") for c in codes}


def infer_request_body() -> dict[str, Any]:
    """The request body of an OIP infer route: JSON, or the binary tensor data extension."""
    return {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "Binary tensor data extension (Inference-Header-Content-Length)",
            },
        },
    }
