"""Tensor datatypes and signatures of the Open Inference Protocol v2.

These types are shared by the registry (a version's signature), the runtimes (what a
model takes and gives) and, later, the serving codecs. They know nothing of HTTP.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

DATATYPE_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


def datatype_of(dtype: np.dtype[np.generic]) -> Datatype:
    """The protocol datatype for a numpy dtype (strings and bytes map to BYTES)."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    for name, candidate in DATATYPE_TO_NUMPY.items():
        if candidate == dtype:
            return name  # type: ignore[return-value]
    raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")


class TensorSpec(BaseModel):
    """One named tensor a model takes or gives; -1 in ``shape`` means any size."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    datatype: Datatype
    shape: list[int] = Field(description="Dimensions; -1 for a variable one (usually the batch).")

    def accepts_shape(self, shape: tuple[int, ...] | list[int]) -> bool:
        """Whether a concrete shape fits this spec."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


class Signature(BaseModel):
    """The tensors a model version takes and gives."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
