"""Published splits, reproduced as given: a split manifest (a CSV written by
:func:`anomaly_bench.data.split.write_manifest` or by hand) and a DDAD / MedIAnomaly ``data.json``
(:mod:`anomaly_bench.data.data_json`). Duplicate groups they put across roles are kept and counted
(:func:`published_cross_role`), never refused; the suite's own splits (:func:`anomaly_bench.data.split.make_split`)
stay leak-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly_bench.core.errors import DataError
from anomaly_bench.data.data_json import match_names, read_data_json
from anomaly_bench.data.dedup import exact_groups
from anomaly_bench.data.leakage import cross_role_duplicates
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split_roles import ROLES, Split, SplitConfig, _units, check_split, role_counts


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
    # lazy: loading imports the format loaders, which import this package's split helpers
    from anomaly_bench.data.loading import resolve_data_path

    return resolve_data_path(str(path), ds.meta.get("card_source"), ds.meta.get("data_root"))


def published_cross_role(ds: ImageDataset, roles: np.ndarray) -> dict[str, Any]:
    """:func:`anomaly_bench.data.leakage.cross_role_duplicates` for a published split of ``ds``."""
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
