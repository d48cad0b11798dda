"""Types of the Open Inference Protocol v2 shared by every service (no HTTP, no gRPC here)."""

from aimesh.protocol.inference import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    Parameters,
    RequestedOutput,
    ServerMetadata,
    Tensor,
    check_inputs,
)
from aimesh.protocol.names import ALIAS_NAME, MODEL_NAME, VERSION_REF
from aimesh.protocol.numbers import STORED_INT_MAX, whole_number
from aimesh.protocol.openapi import (
    ERROR_REF,
    ERROR_SCHEMA,
    INFER_REQUEST_SCHEMA,
    INFER_RESPONSE_SCHEMA,
    METRICS_RESPONSE,
    TENSOR_SCHEMA,
    error_components,
    error_response,
    error_responses,
    infer_request_body,
    json_content,
    model_paths,
)
from aimesh.protocol.tensors import (
    DATATYPE_TO_NUMPY,
    Datatype,
    Signature,
    TensorSpec,
    datatype_of,
)

__all__ = [
    "ALIAS_NAME",
    "DATATYPE_TO_NUMPY",
    "ERROR_REF",
    "ERROR_SCHEMA",
    "INFER_REQUEST_SCHEMA",
    "INFER_RESPONSE_SCHEMA",
    "METRICS_RESPONSE",
    "MODEL_NAME",
    "STORED_INT_MAX",
    "TENSOR_SCHEMA",
    "VERSION_REF",
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
    "check_inputs",
    "datatype_of",
    "error_components",
    "error_response",
    "error_responses",
    "infer_request_body",
    "json_content",
    "model_paths",
    "whole_number",
]
