"""Types of the Open Inference Protocol v2 shared by every service."""

from aimesh.protocol.tensors import (
    DATATYPE_TO_NUMPY,
    Datatype,
    Signature,
    TensorSpec,
    datatype_of,
)

__all__ = ["DATATYPE_TO_NUMPY", "Datatype", "Signature", "TensorSpec", "datatype_of"]
