"""Public plugin API (a stable import path for one-file plugins): registration by decorator.

The implementation lives in :mod:`anomaly_bench.core.registry`.
"""

from anomaly_bench.core.interface import register_method  # noqa: F401
from anomaly_bench.core.registry import (  # noqa: F401
    get_method,
    list_methods,
    load_plugin,
    register_format,
)

__all__ = ["get_method", "list_methods", "load_plugin", "register_format", "register_method"]
