"""Public plugin API (a stable import path): the contract test every registered method passes, like
scikit-learn's ``check_estimator``. The implementation lives in :mod:`anomaly_bench.harness.contract`."""

from anomaly_bench.harness.contract import check_method, tiny_data  # noqa: F401

__all__ = ["check_method", "tiny_data"]
