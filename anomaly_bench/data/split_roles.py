"""The split's building blocks: the roles, the split settings (:class:`SplitConfig`), a split (:class:`Split`),
the units a split never cuts (subjects joined with their duplicate groups) and the leakage check. Both the suite's
own split (:mod:`anomaly_bench.data.split`) and the published ones (:mod:`anomaly_bench.data.published_split`)
build on them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data.data_json import DEFAULT_MAX_MISSING
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
