"""Public plugin API (a stable import path for one-file plugins): the method contract.

The implementation lives in :mod:`anomaly_bench.core.interface`; plugins written against
``from anomaly_bench.interface import AnomalyMethod, ...`` keep working.
"""

from anomaly_bench.core.interface import (  # noqa: F401
    TRAIN_SET_CHOICES,
    AnomalyMethod,
    FitContext,
    ScoreResult,
    TrainSets,
    batched,
    resolve_device,
    to_numpy_scores,
)

__all__ = ["TRAIN_SET_CHOICES", "AnomalyMethod", "FitContext", "ScoreResult", "TrainSets", "batched",
           "resolve_device", "to_numpy_scores"]
