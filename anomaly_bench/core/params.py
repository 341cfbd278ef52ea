"""Checks of one method parameter's value against its default (the schema): its type, and for counts, periods and
learning rates (recognised by name, :data:`PARAM_BOUNDS`) its range."""

from __future__ import annotations

import re
from typing import Any

from anomaly_bench.core.errors import ConfigError


def _type_ok(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


#: (name pattern, least value, whether the least value itself is allowed) of the numeric method parameters
#: checked by :meth:`AnomalyMethod.validate_params`; a count whose default is 0 (0 = off / use another
#: setting) may be 0
PARAM_BOUNDS = ((re.compile(r"(^|_)(iterations|epochs|batch_size)$|^(n_critic|critic_iters|r_steps|lr_update_step)$"
                            r"|^(latent|hidden|base_width|expansion|en_depth|de_depth)$"), 1, True),
                (re.compile(r"_every$"), 0, True), (re.compile(r"(^|_)lr$"), 0, False))


def _lower_bound(name: str, default: Any) -> tuple[float, bool] | None:
    for pattern, low, inclusive in PARAM_BOUNDS:
        if pattern.search(name):
            if inclusive and low == 1 and isinstance(default, (int, float)) and default == 0:
                return 0, True
            return low, inclusive
    return None


def check_param_value(name: str, default: Any, value: Any, where: str) -> None:
    """A :class:`ConfigError` naming ``where`` and the parameter when ``value`` has the wrong type or range."""
    if not _type_ok(default, value):
        raise ConfigError(f"{where}: parameter '{name}' must be {type(default).__name__} (default {default!r}), "
                          f"got {value!r}")
    low = _lower_bound(name, default)
    if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and (
            value < low[0] or (value == low[0] and not low[1])):
        raise ConfigError(f"{where}: parameter '{name}' must be {'>=' if low[1] else '>'} {low[0]}, got {value!r}")
