"""Reading the regression references (``regress``'s statistical and exact JSON files) and checking their content
before anything runs, so that a damaged reference fails at once naming the file, not after the regression run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from anomaly_bench.core.errors import BenchError


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_reference(ref: Any) -> str:
    """What is wrong with a statistical reference's content ('' when nothing): an object whose ``values`` maps
    keys to numbers or ``{mean, sd, n, ...}`` records, with numeric ``floor``/``k``/``min_rank_corr``."""
    if not isinstance(ref, dict):
        return f"a JSON {type(ref).__name__}, not an object"
    values = ref.get("values")
    if not isinstance(values, dict) or not values:
        return "no `values` (the reference metrics, an object of dataset|setting|method|... keys)"
    bad = [k for k, v in values.items() if not (_number(v) or (isinstance(v, dict) and _number(v.get("mean"))))]
    if bad:
        return f"`values` entry {bad[0]!r} is neither a number nor a record with a numeric mean"
    wrong = [k for k in ("floor", "k", "min_rank_corr") if k in ref and not _number(ref[k])]
    if wrong or not isinstance(ref.get("scores") or {}, dict):
        return f"`{(wrong or ['scores'])[0]}` has the wrong type"
    return ""


def check_exact_reference(ref: Any) -> str:
    """What is wrong with an exact reference's content ('' when nothing)."""
    if not isinstance(ref, dict):
        return f"a JSON {type(ref).__name__}, not an object"
    wrong = [k for k in ("splits", "methods") if not isinstance(ref.get(k, {}), dict)]
    if not ref.get("splits") and not ref.get("methods"):
        return "neither `splits` nor `methods` (the recorded exact results)"
    if wrong or ("rtol" in ref and not _number(ref["rtol"])):
        return f"`{(wrong or ['rtol'])[0]}` has the wrong type"
    return ""


def read_reference(path: Path, what: str, update: bool = False, exact: bool = False) -> dict[str, Any] | None:
    """A reference JSON, checked before anything runs (:func:`check_reference`, :func:`check_exact_reference`).
    None when absent; with ``update`` also when damaged (it is about to be replaced), else a damaged one raises a
    :class:`BenchError` naming the file and the fix."""
    if not path.is_file():
        return None
    try:
        ref = json.loads(path.read_text())
        problem = (check_exact_reference if exact else check_reference)(ref)
    except (OSError, ValueError) as exc:
        problem = f"not readable JSON ({type(exc).__name__}: {exc})"
    if problem and not update:
        raise BenchError(f"{path}: the {what} reference is damaged: {problem}; restore it (git checkout -- {path}) or "
                         f"rebuild it with `anomaly-bench regress --update`")
    return None if problem else ref
