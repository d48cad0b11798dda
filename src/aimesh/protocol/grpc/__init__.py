"""The gRPC side of the Open Inference Protocol v2: KServe's ``inference.GRPCInferenceService``.

The messages and service stubs are generated from ``proto/grpc_predict_v2.proto`` by
``scripts/gen_proto.sh`` (``make proto``); the converters in :mod:`.convert` turn them into
aimesh's in-memory protocol types and back; :mod:`.status` is the one table from an error
to its gRPC status. tritonclient.grpc speaks this service unchanged.
"""

from aimesh.protocol.grpc._generated.grpc_predict_v2_pb2 import (
    InferParameter,
    InferTensorContents,
    ModelInferRequest,
    ModelInferResponse,
    ModelMetadataRequest,
    ModelMetadataResponse,
    ModelReadyRequest,
    ModelReadyResponse,
    ServerLiveRequest,
    ServerLiveResponse,
    ServerMetadataRequest,
    ServerMetadataResponse,
    ServerReadyRequest,
    ServerReadyResponse,
)
from aimesh.protocol.grpc._generated.grpc_predict_v2_pb2_grpc import (
    GRPCInferenceServiceServicer,
    GRPCInferenceServiceStub,
    add_GRPCInferenceServiceServicer_to_server,
)
from aimesh.protocol.grpc.convert import (
    metadata_from_pb,
    metadata_to_pb,
    model_metadata_from_pb,
    model_metadata_to_pb,
    parameters_from_pb,
    parameters_to_pb,
    request_from_pb,
    request_to_pb,
    response_from_pb,
    response_to_pb,
)
from aimesh.protocol.grpc.status import (
    GRPC_STATUS,
    grpc_details,
    grpc_status_of,
    internal_details,
    request_id_in,
)

__all__ = [
    "GRPC_STATUS",
    "GRPCInferenceServiceServicer",
    "GRPCInferenceServiceStub",
    "InferParameter",
    "InferTensorContents",
    "ModelInferRequest",
    "ModelInferResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "add_GRPCInferenceServiceServicer_to_server",
    "grpc_details",
    "grpc_status_of",
    "internal_details",
    "metadata_from_pb",
    "metadata_to_pb",
    "model_metadata_from_pb",
    "model_metadata_to_pb",
    "parameters_from_pb",
    "parameters_to_pb",
    "request_from_pb",
    "request_id_in",
    "request_to_pb",
    "response_from_pb",
    "response_to_pb",
]
