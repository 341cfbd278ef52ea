"""anomaly-bench: a benchmark suite for unsupervised anomaly detection in medical images."""

__version__ = "0.1.0"

from anomaly_bench.core.interface import (  # noqa: E402,F401
    AnomalyMethod,
    FitContext,
    ScoreResult,
    TrainSets,
    register_method,
)
from anomaly_bench.core.registry import get_method, list_methods  # noqa: E402,F401
