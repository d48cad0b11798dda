"""A training job's payload: what ``aimesh train`` submits and a training worker checks.

Checked on both sides: the CLI refuses a bad split or an unknown metric before it submits,
and the worker refuses (:class:`~aimesh.errors.JobRejected`, never retried) a payload that
was submitted some other way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aimesh.errors import InvalidRequest, JobRejected
from aimesh.lake import DatasetRef
from aimesh.registry import check_alias_name, check_model_name
from aimesh.training.metrics import check_metrics
from aimesh.training.split import Split

__all__ = ["Scalar", "TrainRequest", "parse_params"]

Scalar = bool | int | float | str | None

_REQUIRED = ("model", "dataset", "trainer", "target")


@dataclass(frozen=True)
class TrainRequest:
    """A training job's payload, checked."""

    model: str
    dataset: str
    trainer: str
    target: str
    params: dict[str, Scalar] = field(default_factory=dict)
    split: Split = field(default_factory=Split)
    metrics: tuple[str, ...] = ()
    """The metrics to compute; empty: every one that applies to the estimator."""
    alias: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", check_metrics(self.metrics))

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainRequest:
        """The request in ``payload``; :class:`JobRejected` when it is malformed."""
        missing = [k for k in _REQUIRED if not payload.get(k)]
        if missing:
            raise JobRejected(f"training payload lacks {', '.join(missing)}")
        strings = {k: payload[k] for k in _REQUIRED}
        for key, value in strings.items():
            if not isinstance(value, str):
                raise JobRejected(f"training payload: {key} must be a string, not {value!r}")
        params = payload.get("params") or {}
        if not isinstance(params, dict) or not all(
            v is None or isinstance(v, bool | int | float | str) for v in params.values()
        ):
            raise JobRejected(
                "training payload: params must map names to scalars (numbers, strings, "
                "true/false, null)"
            )
        alias = payload.get("alias")
        if alias is not None and not isinstance(alias, str):
            raise JobRejected(f"training payload: alias must be a string, not {alias!r}")
        try:  # names first: nothing is read, trained or pushed for a name that can't be one
            check_model_name(strings["model"])
            DatasetRef.parse(strings["dataset"])
            if alias is not None:
                check_alias_name(alias)
        except InvalidRequest as exc:
            raise JobRejected(f"training payload: {exc}") from exc
        seed = payload.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise JobRejected(f"training payload: seed must be an integer, not {seed!r}")
        return cls(
            model=strings["model"],
            dataset=strings["dataset"],
            trainer=strings["trainer"],
            target=strings["target"],
            params=dict(params),
            split=_split_of(payload),
            metrics=_metrics_of(payload),
            alias=alias,
            seed=seed,
        )

    def payload(self) -> dict[str, Any]:
        """The JSON payload of a job for this request."""
        out: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "trainer": self.trainer,
            "target": self.target,
            "params": dict(self.params),
            "split": str(self.split),
            "seed": self.seed,
        }
        if self.metrics:
            out["metrics"] = list(self.metrics)
        if self.alias is not None:
            out["alias"] = self.alias
        return out


def _split_of(payload: dict[str, Any]) -> Split:
    """The payload's ``split``, or a random one of its ``test_size`` (the older field)."""
    spec = payload.get("split")
    if spec is not None:
        if not isinstance(spec, str):
            raise JobRejected(f"training payload: split must be a string, not {spec!r}")
        return Split.parse(spec)
    test_size = payload.get("test_size", 0.2)
    if isinstance(test_size, bool) or not isinstance(test_size, int | float):
        raise JobRejected(f"training payload: test_size must be in (0, 1), not {test_size!r}")
    return Split("random", fraction=float(test_size))


def _metrics_of(payload: dict[str, Any]) -> tuple[str, ...]:
    names = payload.get("metrics") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise JobRejected(f"training payload: metrics must be a list of names, not {names!r}")
    return tuple(names)


def _scalar(text: str) -> Scalar:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_params(items: list[str] | tuple[str, ...]) -> dict[str, Scalar]:
    """``["max_iter=300", "C=0.5", "fit_intercept=false"]`` -> typed values."""
    params: dict[str, Scalar] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"parameter {item!r} must be written name=value")
        params[key.strip()] = _scalar(value)
    return params
