"""Training as a job kind: ``aimesh train`` submits, ``aimesh worker training`` runs.

:func:`train_job` is the handler of the ``training`` job kind. It reads a pinned dataset
snapshot from the lake, holds rows out (``--split``), fits the trainer the job names, scores
the held-out rows (``--metric``), saves the model in a format its runtime loads without
trust and pushes it to the registry as the model's next version, with metrics and lineage.
Serving never imports this package.

Trainers (see :mod:`aimesh.training.trainers`):

- ``sklearn:ClassName``: any scikit-learn estimator, saved with skops (framework sklearn);
- ``xgboost:XGBClassifier``, ``xgboost:XGBRegressor``: saved as UBJSON Boosters (xgboost);
- ``lightgbm:LGBMClassifier``, ``lightgbm:LGBMRegressor``: saved as text Boosters (lightgbm);
- ``module.path:ClassName``: an estimator class installed on the worker;
- ``function:module.path:name``: a function installed on the worker and marked with
  :func:`trainer`; called as ``name(x, y, params)``, it returns a fitted estimator, saved
  by the same rules (XGBoost and LightGBM natively, anything else with skops).

Splits (see :mod:`aimesh.training.split`): ``random:0.2`` (stratified for classifiers),
``random:0.2:unstratified``, ``column:is_test``, ``column:fold=3``. Metrics (see
:mod:`aimesh.training.metrics`): auc, accuracy, f1, log_loss; rmse, mae, r2.
"""

from aimesh.training.job import train, train_job
from aimesh.training.metrics import METRICS
from aimesh.training.request import TrainRequest, parse_params
from aimesh.training.split import Split
from aimesh.training.trainers import Trainer, resolve_trainer, trainer

__all__ = [
    "METRICS",
    "Split",
    "TrainRequest",
    "Trainer",
    "parse_params",
    "resolve_trainer",
    "train",
    "train_job",
    "trainer",
]
