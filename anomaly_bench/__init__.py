"""anomaly-bench: a benchmark suite for unsupervised anomaly detection in medical images."""

__version__ = "0.1.0"

from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets  # noqa: E402,F401
from anomaly_bench.core.registry import get_method, list_methods, register_method  # noqa: E402,F401
