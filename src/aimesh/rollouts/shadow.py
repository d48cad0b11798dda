"""Comparing a shadow's answer with the one the client got. Pure.

A shadow version gets a copy of live requests; its answers are never returned, only
compared: :func:`compare` says whether the two agree on the *top class* (per row, the index
of the largest score of the first output; for an output of one column, its value rounded:
a label) and the *mean absolute difference* of their numbers, over every numeric output
the two share. Answers that cannot be compared (an error, a different shape, text) give
None: counted apart, never as agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aimesh.errors import InvalidRequest
from aimesh.protocol import InferenceResponse, rest_codec

__all__ = ["Comparison", "compare", "compare_bodies"]


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a shadow's answer compares with the live one."""

    agreed: bool
    """The top class (or label) of every row is the same."""
    mean_abs_diff: float
    """Mean absolute difference over every number of the outputs both have."""


def compare(live: InferenceResponse, shadow: InferenceResponse) -> Comparison | None:
    """``shadow`` against ``live``; None when they share no numeric output of one shape."""
    theirs = {t.name: t.data for t in shadow.outputs}
    diffs: list[np.ndarray] = []
    agreed: bool | None = None
    for tensor in live.outputs:
        other = theirs.get(tensor.name)
        mine = tensor.data
        if other is None or other.shape != mine.shape or not _numeric(mine, other):
            continue
        a, b = mine.astype(np.float64), other.astype(np.float64)
        diffs.append(np.abs(a - b).ravel())
        if agreed is None:  # the first comparable output decides the class
            agreed = bool(np.array_equal(_top(a), _top(b)))
    if agreed is None:
        return None
    every = np.concatenate(diffs)
    return Comparison(agreed, float(every.mean()) if every.size else 0.0)


def compare_bodies(
    live: bytes,
    shadow: bytes,
    *,
    live_header_length: int | None = None,
    shadow_header_length: int | None = None,
) -> Comparison | None:
    """:func:`compare` of two OIP REST answers, JSON or (with the length of their JSON
    header) binary tensors; None when either cannot be read."""
    try:
        return compare(
            rest_codec.decode_response(live, header_length=live_header_length),
            rest_codec.decode_response(shadow, header_length=shadow_header_length),
        )
    except (InvalidRequest, ValueError):
        return None


def _numeric(*arrays: np.ndarray) -> bool:
    return all(a.dtype.kind in "biuf" for a in arrays)


def _top(scores: np.ndarray) -> np.ndarray:
    rows = scores.reshape(scores.shape[0], -1) if scores.ndim else scores.reshape(1, 1)
    top: np.ndarray = np.rint(rows[:, 0]) if rows.shape[1] == 1 else np.argmax(rows, axis=1)
    return top
