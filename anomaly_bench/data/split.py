"""The mixed/healthy split protocol.

From a labelled dataset build, deterministically from a seed:

* ``test``: the held-out test set (size and class balance configurable, or the dataset's own test list);
* ``healthy``: set B, known-healthy training images;
* ``mixed``: set A, unannotated training images with a configurable diseased fraction;
* ``holdout_healthy`` / ``holdout_mixed``: parts of B and A that no method trains on, used only for
  label-free checkpoint selection (pseudo-AUC);
* ``unused``: everything else.

Leakage guard: images are grouped into *units* — the connected components of "same subject" and
"same duplicate group" — and a unit always lands in exactly one role. When a dataset's predefined roles
put one unit in both train and test (e.g. a patient in both official lists, or a byte-identical copy of a
test image among the training images), the whole unit goes to ``test`` and the count is reported.

The split is written as a CSV manifest (index, id, subject, unit, label, role) and can be read back to
reproduce a published split exactly.

Published splits (``split.manifest``, ``split.data_json``: a DDAD / MedIAnomaly ``data.json``, see
:mod:`anomaly_bench.data.data_json`; and the ``medianomaly`` format, whose ``data.json`` is used unless
``use_predefined_roles: false``) are *taken as given*: a duplicate group they put in several roles is kept,
not refused, and counted in ``split.report["published_split_cross_role_duplicates"]`` (test images with an
exact / near copy in training, the groups), which the runner writes to run.json, the duplicate report and the data
notes. The suite's own splits still refuse such a group (:func:`check_split`). A ``data.json`` split carves no
hold-out by default (the published protocol trains on all of ``train/0``): the label-free thresholds are then NaN
and the pseudo-AUC checkpoint selection is skipped; ``holdout_fraction > 0`` carves hold-outs from ``train/0``
and ``train/unlabeled``, a deviation from the published protocol, recorded in the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.core.errors import DataError
from anomaly_bench.data.published_split import data_json_split, read_manifest, resolve_split_file
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split_roles import (  # noqa: F401  (re-exported: the split's public names live here too)
    NATURAL,
    ROLES,
    Split,
    SplitConfig,
    _units,
    check_split,
    role_counts,
)


def _count(x: int | float | None, total: int) -> int | None:
    if x is None:
        return None
    if isinstance(x, float) and x < 1.0:
        return int(round(x * total))
    return int(x)


def _take(units_order: list[int], sizes: dict[int, int], target: int) -> tuple[list[int], list[int]]:
    """Take whole units in order until ``target`` images are reached (never overshoot by a whole
    unit when a smaller unit further on fits)."""
    taken, rest, got = [], [], 0
    for u in units_order:
        if got < target and got + sizes[u] <= target + max(0, sizes[u] // 2):
            taken.append(u)
            got += sizes[u]
        else:
            rest.append(u)
    return taken, rest


def make_split(ds: ImageDataset, cfg: SplitConfig, seed: int) -> Split:
    """Build the roles for ``ds`` (see module docstring). Same dataset, config and seed → same split."""
    if cfg.manifest:
        return read_manifest(resolve_split_file(cfg.manifest, ds), ds)
    if cfg.data_json:
        return data_json_split(ds, resolve_split_file(cfg.data_json, ds), cfg, seed)
    if ds.meta.get("data_json") and cfg.use_predefined_roles:  # the medianomaly format's own data.json
        return data_json_split(ds, Path(ds.meta["data_json"]), cfg, seed)
    if cfg.seed is not None:
        seed = cfg.seed
    rng = np.random.default_rng(seed)
    unit = _units(ds)
    n_units = int(unit.max()) + 1
    sizes = dict(zip(*np.unique(unit, return_counts=True)))
    sizes = {int(k): int(v) for k, v in sizes.items()}
    ulabel = np.zeros(n_units, dtype=np.int64)
    np.maximum.at(ulabel, unit, ds.labels)
    n_mixed_label_units = 0
    for u in range(n_units):
        labs = ds.labels[unit == u]
        n_mixed_label_units += int(labs.min() != labs.max())

    role_of_unit = np.array([""] * n_units, dtype=object)
    report: dict[str, Any] = {"seed": seed, "config": cfg.to_dict(), "n_units": n_units,
                              "units_with_healthy_and_diseased_images": n_mixed_label_units}

    natural = cfg.test_diseased_fraction == NATURAL
    predefined = ds.roles if (cfg.use_predefined_roles and ds.roles is not None and any(ds.roles)) else None
    moved_to_test = 0
    if predefined is not None:
        for u in range(n_units):
            r = set(predefined[unit == u]) - {""}
            if "test" in r:
                role_of_unit[u] = "test"
                moved_to_test += int(len(r) > 1)
            elif len(r) == 1:
                role_of_unit[u] = r.pop()
            elif r:  # e.g. a subject both in predefined mixed and healthy: keep out of B
                role_of_unit[u] = "mixed" if "mixed" in r else "train"
        report["predefined_roles"] = True
        report["units_moved_to_test_because_they_also_appear_in_test"] = moved_to_test

    def shuffled(units: list[int]) -> list[int]:
        units = sorted(units)
        return [units[i] for i in rng.permutation(len(units))]

    # ---- test set ---------------------------------------------------------------------------
    if predefined is not None and (role_of_unit == "test").any():
        cand = [u for u in range(n_units) if role_of_unit[u] == "test"]
        total_test = sum(sizes[u] for u in cand)
        fraction = isinstance(cfg.test_size, float) and cfg.test_size < 1
        want = None if fraction else _count(cfg.test_size, total_test)
        if want is not None and want < total_test and not natural:
            for u in cand:
                role_of_unit[u] = "unused"
            _select_test(cand, ulabel, sizes, want, cfg.test_diseased_fraction, role_of_unit, shuffled)
    else:
        cand = [u for u in range(n_units) if role_of_unit[u] in ("", "train")]
        want = _count(cfg.test_size, sum(sizes[u] for u in cand))
        frac_d = cfg.test_diseased_fraction
        if natural:  # the candidates' own prevalence
            n_d = sum(sizes[u] for u in cand if ulabel[u] == 1)
            frac_d = n_d / max(1, sum(sizes[u] for u in cand))
        _select_test(cand, ulabel, sizes, want or 0, frac_d, role_of_unit, shuffled)

    # ---- sets A and B -----------------------------------------------------------------------
    pool = [u for u in range(n_units) if role_of_unit[u] in ("", "train")]
    pool_h = shuffled([u for u in pool if ulabel[u] == 0])
    pool_d = shuffled([u for u in pool if ulabel[u] == 1])
    n_pool_h = sum(sizes[u] for u in pool_h)
    n_pool_d = sum(sizes[u] for u in pool_d)
    if cfg.mixed_diseased is not None or cfg.mixed_healthy is not None:
        want_d, want_h = int(cfg.mixed_diseased or 0), int(cfg.mixed_healthy or 0)
        if want_d > n_pool_d or want_h > n_pool_h:
            raise DataError(f"split: set A asks for {want_d} diseased + {want_h} healthy images but the training "
                            f"pool has {n_pool_d} diseased and {n_pool_h} healthy; lower split.mixed_diseased / "
                            f"split.mixed_healthy")
    else:
        p = cfg.mixed_diseased_fraction
        total_a = _count(cfg.mixed_size, n_pool_h + n_pool_d)
        if total_a is not None:
            want_d, want_h = int(round(total_a * p)), total_a - int(round(total_a * p))
        else:
            want_d = n_pool_d
            want_h = int(round(want_d * (1 - p) / p)) if p > 0 else n_pool_h // 2
        if want_h > n_pool_h // 2:
            want_h = n_pool_h // 2
            if p > 0 and total_a is None:
                want_d = min(want_d, int(round(want_h * p / (1 - p))) if p < 1 else want_d)
        want_d = min(want_d, n_pool_d)
    a_d, rest_d = _take(pool_d, sizes, want_d)
    a_h, rest_h = _take(pool_h, sizes, want_h)
    for u in rest_d:
        role_of_unit[u] = "unused"
    for u in a_d + a_h:
        role_of_unit[u] = "mixed"
    want_b = _count(cfg.healthy_size, sum(sizes[u] for u in rest_h))
    b, rest_b = _take(rest_h, sizes, want_b) if want_b is not None else (rest_h, [])
    for u in b:
        role_of_unit[u] = "healthy"
    for u in rest_b:
        role_of_unit[u] = "unused"

    # ---- hold-out parts of A and B for label-free model selection ----------------------------
    holdout = cfg.holdout(published=False)
    for role in ("mixed", "healthy"):
        units = shuffled([u for u in range(n_units) if role_of_unit[u] == role])
        k = int(round(len(units) * holdout))
        if holdout > 0 and len(units) >= 4:
            k = max(k, 1)
        for u in units[:k]:
            role_of_unit[u] = f"holdout_{role}"
    role_of_unit[role_of_unit == ""] = "unused"
    role_of_unit[role_of_unit == "train"] = "unused"
    if natural and predefined is None:  # a published test list stays as published
        role_of_unit[role_of_unit == "unused"] = "test"

    roles = role_of_unit[unit].astype(object)
    split = Split(roles=roles, units=unit, report=report)
    report["counts"] = role_counts(roles, ds.labels)
    check_split(split, ds)
    return split


def _select_test(cand, ulabel, sizes, want, frac_d, role_of_unit, shuffled) -> None:
    want_d = int(round(want * frac_d))
    want_h = want - want_d
    d, _ = _take(shuffled([u for u in cand if ulabel[u] == 1]), sizes, want_d)
    h, _ = _take(shuffled([u for u in cand if ulabel[u] == 0]), sizes, want_h)
    for u in d + h:
        role_of_unit[u] = "test"


def write_manifest(split: Split, ds: ImageDataset, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({"index": np.arange(len(ds)), "id": ds.ids, "subject": ds.subject_ids,
                       "unit": split.units, "label": ds.labels, "role": split.roles})
    if ds.dup_groups is not None:
        df["dup_group"] = ds.dup_groups
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
