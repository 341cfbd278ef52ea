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

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data.data_json import DEFAULT_MAX_MISSING, match_names, read_data_json
from anomaly_bench.data.records import ImageDataset

ROLES = ("test", "healthy", "mixed", "holdout_healthy", "holdout_mixed", "unused")
#: ``test_diseased_fraction: natural``: no forced class balance; every image no training role takes is tested.
NATURAL = "natural"


@dataclass
class SplitConfig:
    """Split settings (a dataset card's or experiment's ``split:`` section).

    Sizes are image counts (int) or fractions of the available images (float < 1).
    ``mixed_diseased`` / ``mixed_healthy`` give set A's composition exactly (the paper's COVIDx protocol:
    1,570 + 3,663); otherwise ``mixed_size`` and ``mixed_diseased_fraction`` do. With neither, A takes
    every diseased training image plus enough healthy ones for the requested fraction, never more than
    half of the healthy pool (the rest is B).
    ``test_diseased_fraction: natural`` keeps the data's own prevalence: the ``test_size`` draw ignores the class
    and every image left over once A, B and the hold-outs are drawn joins the test set (all remaining images; a
    published test list is kept whole). The default, 0.5, balances the test set.
    ``seed`` fixes the split's own random draw; by default (null) each job seed draws its own split, so a
    seed's result varies with both the test images and the training. A fixed ``seed`` keeps one split for every
    job seed, so seeds then vary the training alone (the regression experiment's spread).
    ``holdout_fraction`` (default null: 0.1 for the suite's splits, 0 for a ``data_json`` split) is the part of A
    and B held out for label-free thresholds and checkpoint selection.
    ``manifest`` (a CSV written by :func:`write_manifest`) or ``data_json`` (a DDAD / MedIAnomaly ``data.json``;
    a relative path is resolved like the card's ``root``) give a published split, taken as given (module
    docstring); with ``data_json`` the other size keys are not used. ``data_json_max_missing``: the fraction of the
    file's names that may be absent from the data (skipped and reported) before it is an error.
    """

    test_size: int | float = 0.2
    test_diseased_fraction: float | str = 0.5
    mixed_size: int | float | None = None
    mixed_diseased_fraction: float = 0.3
    mixed_diseased: int | None = None
    mixed_healthy: int | None = None
    healthy_size: int | float | None = None
    holdout_fraction: float | None = None
    use_predefined_roles: bool = True
    manifest: str | None = None
    data_json: str | None = None
    data_json_max_missing: float = DEFAULT_MAX_MISSING
    seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "split") -> "SplitConfig":
        d = dict(d or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        cfg = cls(**d)
        for name in ("test_diseased_fraction", "mixed_diseased_fraction", "holdout_fraction",
                     "data_json_max_missing"):
            v = getattr(cfg, name)
            if (name == "test_diseased_fraction" and v == NATURAL) or (name == "holdout_fraction" and v is None):
                continue
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"{where}.{name} must be a number in [0, 1], got {v!r}")
        if cfg.seed is not None and (isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int)):
            raise ConfigError(f"{where}.seed must be an integer or null (null: each job seed draws its own "
                              f"split), got {cfg.seed!r}")
        for name in ("test_size", "mixed_size", "healthy_size", "mixed_diseased", "mixed_healthy"):
            v = getattr(cfg, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
                raise ConfigError(f"{where}.{name} must be a non-negative number or null, got {v!r}")
        for name in ("manifest", "data_json"):
            v = getattr(cfg, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{where}.{name} must be a file path (a string) or null, got {v!r}")
        if cfg.manifest and cfg.data_json:
            raise ConfigError(f"{where}: give split.manifest or split.data_json, not both (each is a whole split)")
        return cfg

    def holdout(self, published: bool) -> float:
        """The effective hold-out fraction: the setting, else 0.1 (0 for a published ``data_json`` split)."""
        if self.holdout_fraction is not None:
            return float(self.holdout_fraction)
        return 0.0 if published else 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Split:
    roles: np.ndarray  # (N,) object array of role names
    units: np.ndarray  # (N,) int unit id
    report: dict[str, Any]

    def indices(self, role: str) -> np.ndarray:
        return np.flatnonzero(self.roles == role)

    def counts(self) -> dict[str, dict[str, int]]:
        return self.report["counts"]


def _units(ds: ImageDataset) -> np.ndarray:
    """Union-find over subject ids and duplicate groups: one unit per connected component."""
    n = len(ds)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(groups) -> None:
        first: dict[Any, int] = {}
        for i, g in enumerate(groups):
            if g is None or (isinstance(g, (int, np.integer)) and g < 0):
                continue
            if g in first:
                a, b = find(i), find(first[g])
                if a != b:
                    parent[a] = b
            else:
                first[g] = i

    link(ds.subject_ids)
    if ds.dup_groups is not None:
        link([int(g) for g in ds.dup_groups])
    roots = np.array([find(i) for i in range(n)])
    _, unit = np.unique(roots, return_inverse=True)
    return unit


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


def role_counts(roles: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, int]]:
    return {r: {"healthy": int(((roles == r) & (labels == 0)).sum()),
                "diseased": int(((roles == r) & (labels == 1)).sum())} for r in ROLES}


def check_split(split: Split, ds: ImageDataset, published: bool = False) -> None:
    """Assert the leakage rules: one role per subject and per duplicate group; test set has both classes;
    set B holds no diseased image. A ``published`` split (manifest, data.json) is taken as given: its duplicate
    groups spanning several roles are kept and counted (:func:`published_cross_role`), not refused."""
    roles = split.roles
    by_subject: dict[str, set] = {}
    for s, r in zip(ds.subject_ids, roles):
        by_subject.setdefault(s, set()).add(r)
    leaked = [s for s, r in by_subject.items() if len(r) > 1]
    if leaked:
        raise DataError(f"split: subjects in several roles: {leaked[:5]} (bug in the split or the manifest)")
    if ds.dup_groups is not None:
        by_group: dict[int, set] = {}
        for g, r in zip(ds.dup_groups, roles):
            if g >= 0:
                by_group.setdefault(int(g), set()).add(r)
        bad = [g for g, r in by_group.items() if len(r) > 1]
        if bad and not published:
            raise DataError(f"split: duplicate groups {bad[:5]} span several roles")
    for role in ("healthy", "holdout_healthy"):
        if ((roles == role) & (ds.labels == 1)).any():
            raise DataError(f"split: diseased images in the healthy role '{role}' (check the class mapping)")
    test_labels = ds.labels[roles == "test"]
    if len(test_labels) == 0 or len(set(test_labels)) < 2:
        raise DataError(f"split: the test set needs healthy and diseased images, got {len(test_labels)} images "
                        f"with labels {sorted(set(test_labels.tolist()))}; check split.test_size / the dataset")
    if not (roles == "healthy").any():
        raise DataError("split: healthy set B is empty; lower split.test_size or split.mixed_* so that "
                        "healthy training images remain")


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


def read_manifest(path: str | Path, ds: ImageDataset) -> Split:
    """Read a manifest written by :func:`write_manifest` (or by hand: columns ``id`` and ``role``)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"id": str, "subject": str})
    except FileNotFoundError:
        raise DataError(f"split manifest {path}: file not found") from None
    except Exception as exc:
        raise DataError(f"split manifest {path}: not a readable CSV ({exc})") from None
    for col in ("id", "role"):
        if col not in df.columns:
            raise DataError(f"split manifest {path}: missing column '{col}' (need at least id, role)")
    bad_roles = sorted(set(df["role"]) - set(ROLES))
    if bad_roles:
        raise DataError(f"split manifest {path}: unknown roles {bad_roles}; allowed: {list(ROLES)}")
    pos = {i: k for k, i in enumerate(ds.ids)}
    missing = [i for i in df["id"] if i not in pos]
    if missing:
        raise DataError(f"split manifest {path}: {len(missing)} ids are not in dataset '{ds.name}' "
                        f"(first: {missing[:3]}); was it written for another dataset or image size?")
    roles = np.array(["unused"] * len(ds), dtype=object)
    roles[[pos[i] for i in df["id"]]] = df["role"].to_numpy()
    if "label" in df.columns:
        lab = ds.labels[[pos[i] for i in df["id"]]]
        if (lab != df["label"].to_numpy()).any():
            raise DataError(f"split manifest {path}: labels disagree with dataset '{ds.name}'")
    split = Split(roles=roles, units=_units(ds), report={"manifest": str(path)})
    split.report["counts"] = role_counts(roles, ds.labels)
    split.report["published"] = {"source": "manifest", "path": str(path),
                                 "holdout": "as the manifest gives them"}
    check_split(split, ds, published=True)
    split.report["published_split_cross_role_duplicates"] = published_cross_role(ds, roles)
    return split


def resolve_split_file(path: str | Path, ds: ImageDataset) -> Path:
    """A split file named in a ``split`` section: absolute as written; relative like the card's ``root``
    (:func:`anomaly_bench.data.loading.resolve_data_path`: the checkout, else the card's folder)."""
    from anomaly_bench.data.loading import resolve_data_path

    return resolve_data_path(str(path), ds.meta.get("card_source"), ds.meta.get("data_root"))


def published_cross_role(ds: ImageDataset, roles: np.ndarray) -> dict[str, Any]:
    """:func:`anomaly_bench.data.leakage.cross_role_duplicates` for a published split of ``ds``."""
    from anomaly_bench.data.dedup import exact_groups
    from anomaly_bench.data.leakage import cross_role_duplicates

    exact = exact_groups(ds.images, ds.meta.get("content_sha256"))
    return cross_role_duplicates(ds.ids, roles, ds.dup_groups, exact)


def data_json_split(ds: ImageDataset, path: Path, cfg: SplitConfig, seed: int) -> Split:
    """The split a DDAD / MedIAnomaly ``data.json`` gives (:mod:`anomaly_bench.data.data_json`): train/0 -> healthy,
    train/unlabeled -> mixed, test -> test, every other image -> unused; no hold-out unless
    ``holdout_fraction > 0`` (then carved from healthy and mixed by whole units, a documented deviation)."""
    lists = read_data_json(path)
    roles, match = match_names(path, lists, ds.ids, ds.labels, ds.name, cfg.data_json_max_missing,
                               limited=bool(ds.meta.get("limit_per_class")))
    if ds.meta.get("data_json_unlisted_files"):
        match["unlisted_files_not_loaded"] = ds.meta["data_json_unlisted_files"]
    holdout = cfg.holdout(published=True)
    units = _units(ds)
    if holdout > 0:
        rng = np.random.default_rng(cfg.seed if cfg.seed is not None else seed)
        for role in ("mixed", "healthy"):
            members = np.flatnonzero(roles == role)
            us = np.unique(units[members])
            us = us[rng.permutation(len(us))]
            k = int(round(len(us) * holdout))
            if len(us) >= 4:
                k = max(k, 1)
            roles[members[np.isin(units[members], us[:k])]] = f"holdout_{role}"
        how = (f"holdout_fraction {holdout:g} of train/0 and train/unlabeled held out (by whole duplicate/subject "
               f"units) for label-free thresholds and checkpoint selection: a deviation from the published "
               f"protocol, which trains on all of train/0")
    else:
        how = ("none: the published protocol trains on all of train/0, so the label-free thresholds are NaN and "
               "the pseudo-AUC checkpoint selection is skipped (split.holdout_fraction > 0 carves hold-outs, a "
               "deviation)")
    defaults = SplitConfig()
    ignored = sorted(k for k in ("test_size", "test_diseased_fraction", "mixed_size", "mixed_diseased_fraction",
                                 "mixed_diseased", "mixed_healthy", "healthy_size")
                     if getattr(cfg, k) != getattr(defaults, k))
    published = {"source": "data_json", "path": str(path), **match, "holdout": how}
    if ignored:
        published["settings_not_used"] = ignored
    split = Split(roles=roles, units=units, report={"seed": seed, "config": cfg.to_dict(), "published": published})
    split.report["counts"] = role_counts(roles, ds.labels)
    check_split(split, ds, published=True)
    split.report["published_split_cross_role_duplicates"] = published_cross_role(ds, roles)
    return split
