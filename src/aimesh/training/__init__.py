"""Training as a job kind: ``aimesh train`` submits, ``aimesh worker training`` runs.

:func:`train_job` is the handler of the ``training`` job kind. It reads a pinned dataset
snapshot from the lake, fits a scikit-learn estimator (``sklearn:ClassName``) or any
estimator importable as ``module.path:Name``, evaluates it on a held-out split, saves it
with skops and pushes it to the registry as the next version of the model, with metrics
and lineage. Serving never imports this package.
"""

from aimesh.training.job import TrainRequest, parse_params, resolve_trainer, train_job

__all__ = ["TrainRequest", "parse_params", "resolve_trainer", "train_job"]
