"""Types of the Open Inference Protocol v2 shared by every service (no HTTP, no gRPC here)."""

from aimesh.protocol.inference import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    ServerMetadata,
    Tensor,
)
from aimesh.protocol.numbers import STORED_INT_MAX, whole_number
from aimesh.protocol.openapi import (
    ERROR_SCHEMA,
    INFER_REQUEST_SCHEMA,
    INFER_RESPONSE_SCHEMA,
    TENSOR_SCHEMA,
    error_responses,
    infer_request_body,
    json_content,
)
from aimesh.protocol.tensors import (
    DATATYPE_TO_NUMPY,
    Datatype,
    Signature,
    TensorSpec,
    datatype_of,
)

__all__ = [
    "DATATYPE_TO_NUMPY",
    "ERROR_SCHEMA",
    "INFER_REQUEST_SCHEMA",
    "INFER_RESPONSE_SCHEMA",
    "STORED_INT_MAX",
    "TENSOR_SCHEMA",
    "Datatype",
    "InferenceRequest",
    "InferenceResponse",
    "ModelMetadata",
    "Parameters",
    "RequestedOutput",
    "ServerMetadata",
    "Signature",
    "Tensor",
    "TensorSpec",
    "datatype_of",
    "error_responses",
    "infer_request_body",
    "json_content",
    "whole_number",
]
