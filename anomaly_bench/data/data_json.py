"""The DDAD / MedIAnomaly ``data.json`` split files (Cai et al.: DDAD-ASR, MedIAnomaly, AE4AD)::

    {"train": {"0": [known-normal files], "unlabeled": {"0": [normal files], "1": [abnormal files]}},
     "test":  {"0": [normal files], "1": [abnormal files]}}

read as the suite's protocol: ``train/0`` is healthy set B (role ``healthy``), ``train/unlabeled/0`` and
``train/unlabeled/1`` are mixed set A (role ``mixed``; labels hidden from methods), ``test/0`` and ``test/1`` are the
test set (role ``test``). ``train/unlabeled`` may be absent (MedIAnomaly trains on ``train/0`` alone); every other
list must be there and non-empty.

Matching (:func:`match_names`): an entry is matched by its **file name** (the last ``/``-separated part of the
entry) to the image of the dataset whose id (its path relative to the card's root) has that file name; folders are
not compared, so ``Tr-gl_0010.jpg`` finds ``Training/glioma/Tr-gl_0010.jpg``. A name that two of the dataset's
images share is an error (ambiguous); a name that no image has is skipped and reported (count, first names),
and more than ``max_missing`` (a fraction of the file's entries, ``split.data_json_max_missing``, default 0.01) is
an error. Images of the dataset the file does not list get the role ``unused``.

Every problem is one :class:`DataError` naming the file and the key, e.g.
``data.json /path/data.json: key 'test/1': ...``; never a traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomaly_bench.core.errors import DataError

#: (key, role, label) of every list a data.json file may hold, in reading order.
LISTS = (("train/0", "healthy", 0), ("train/unlabeled/0", "mixed", 0), ("train/unlabeled/1", "mixed", 1),
         ("test/0", "test", 0), ("test/1", "test", 1))
OPTIONAL = ("train/unlabeled/0", "train/unlabeled/1")
#: Default of ``split.data_json_max_missing``: the fraction of the file's entries that may be absent from the data.
DEFAULT_MAX_MISSING = 0.01
SCHEMA = ('{"train": {"0": [...], "unlabeled": {"0": [...], "1": [...]}}, '
          '"test": {"0": [...], "1": [...]}}')


def _err(path: Path, key: str | None, msg: str) -> DataError:
    return DataError(f"data.json {path}: " + (f"key '{key}': " if key else "") + msg)


def read_data_json(path: str | Path) -> dict[str, list[str]]:
    """``{key: [names]}`` for the lists of ``path`` (keys of :data:`LISTS`; the optional ``train/unlabeled``
    lists only when present), after checking the structure: a JSON object with ``train`` and ``test`` mappings,
    lists of non-empty strings, no empty list, no name twice in one list or in two lists, no unknown key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _err(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _err(path, None, f"cannot read the file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _err(path, None, f"not valid JSON ({exc}); expected {SCHEMA}") from None
    if not isinstance(data, dict):
        raise _err(path, None, f"the top level is a {type(data).__name__}, expected a mapping {SCHEMA}")

    def mapping(obj: Any, key: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
        if not isinstance(obj, dict):
            raise _err(path, key, f"a {type(obj).__name__} where a mapping with keys {list(allowed)} is expected "
                                  f"(schema {SCHEMA})")
        unknown = sorted(set(map(str, obj)) - set(allowed))
        if unknown:
            raise _err(path, key, f"unknown key(s) {unknown}; allowed: {list(allowed)} (schema {SCHEMA})")
        missing = [k for k in required if k not in obj]
        if missing:
            raise _err(path, f"{key}/{missing[0]}" if key else missing[0], f"missing (schema {SCHEMA})")
        return obj

    top = mapping(data, "", ("train", "test"), ("train", "test"))
    train = mapping(top["train"], "train", ("0", "unlabeled"), ("0",))
    test = mapping(top["test"], "test", ("0", "1"), ("0", "1"))
    raw: dict[str, Any] = {"train/0": train["0"], "test/0": test["0"], "test/1": test["1"]}
    if "unlabeled" in train:
        unl = mapping(train["unlabeled"], "train/unlabeled", ("0", "1"), ("0", "1"))
        raw["train/unlabeled/0"], raw["train/unlabeled/1"] = unl["0"], unl["1"]
    out: dict[str, list[str]] = {}
    where_first: dict[str, str] = {}
    for key, _, _ in LISTS:
        if key not in raw:
            continue
        names = raw[key]
        if not isinstance(names, list):
            raise _err(path, key, f"a {type(names).__name__} where a list of file names is expected")
        if not names:
            raise _err(path, key, "empty list; every list of the file must name at least one image")
        bad = [x for x in names if not isinstance(x, str) or not x.strip()]
        if bad:
            raise _err(path, key, f"{len(bad)} entry(ies) are not file names (non-empty strings), e.g. {bad[0]!r}")
        seen: set[str] = set()
        for name in names:
            base = file_name(name)
            if base in seen:
                raise _err(path, key, f"the name {name!r} appears twice in this list")
            seen.add(base)
            if base in where_first:
                raise _err(path, key, f"the name {name!r} is also in key '{where_first[base]}': one image cannot "
                                      f"have two roles")
            where_first[base] = key
        out[key] = list(names)
    return out


def file_name(entry: str) -> str:
    """The part of an entry or id that is matched: its last ``/``-separated component."""
    return entry.replace(os.sep, "/").rsplit("/", 1)[-1]


def match_names(path: str | Path, lists: dict[str, list[str]], ids: Sequence[str], labels: np.ndarray,
                dataset: str, max_missing: float = DEFAULT_MAX_MISSING, limited: bool = False
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """Roles per image of the dataset (``unused`` where the file does not list it) and the report: entries per
    key (``listed``), images found (``matched``), the names not found (``missing``: count, fraction, per key, the
    first 20) and ``unlisted_images`` (the dataset's images the file does not list: role ``unused``).

    Errors (:class:`DataError` naming the file and the key): a name two images share; more missing names than
    ``max_missing`` of the entries (unless ``limited``: the dataset was loaded with ``limit_per_class``, so absent
    names are expected and only reported); a label the file implies that disagrees with the dataset's."""
    path = Path(path)
    by_name: dict[str, int] = {}
    shared: dict[str, list[int]] = {}
    for i, image_id in enumerate(ids):
        base = file_name(image_id)
        if base in by_name:
            shared.setdefault(base, [by_name[base]]).append(i)
        else:
            by_name[base] = i
    roles = np.array(["unused"] * len(ids), dtype=object)
    listed, matched, missing_by_key = {}, {}, {}
    missing: list[str] = []
    for key, role, label in LISTS:
        if key not in lists:
            continue
        names = lists[key]
        listed[key] = len(names)
        idx, absent = [], []
        for name in names:
            base = file_name(name)
            if base in shared:
                many = [ids[i] for i in shared[base]]
                raise _err(path, key, f"the name {name!r} matches {len(many)} images of dataset '{dataset}' "
                                      f"({many[:3]}); file names must be unique in the data to match a data.json")
            if base in by_name:
                idx.append(by_name[base])
            else:
                absent.append(name)
        idx_a = np.asarray(idx, dtype=np.int64)
        wrong = idx_a[labels[idx_a] != label] if len(idx_a) else idx_a
        if len(wrong):
            what = "healthy" if label == 1 else "diseased"
            raise _err(path, key, f"{len(wrong)} image(s) the file lists as {'abnormal' if label else 'normal'} are "
                                  f"{what} in dataset '{dataset}' (first: {[ids[i] for i in wrong[:3]]}); the file's "
                                  f"labels must agree with the card's classes")
        roles[idx_a] = role
        matched[key] = len(idx_a)
        if absent:
            missing_by_key[key] = len(absent)
            missing.extend(absent)
    n_listed = sum(listed.values())
    frac = len(missing) / max(1, n_listed)
    if missing and not limited and frac > max_missing:
        key = max(missing_by_key, key=missing_by_key.get)
        raise _err(path, key, f"{len(missing)} of the file's {n_listed} names ({100 * frac:.1f}%) are not images of "
                              f"dataset '{dataset}' (most in this key: {missing_by_key[key]}; first: {missing[:5]}), "
                              f"above split.data_json_max_missing = {max_missing:g}. Is the file for this dataset, "
                              f"and is the card's root the full data?")
    report = {"listed": listed, "matched": matched,
              "missing": {"n": len(missing), "fraction": round(frac, 5), "max_missing": max_missing,
                          "by_key": missing_by_key, "first": missing[:20]},
              "unlisted_images": int((roles == "unused").sum()),
              "match": "by file name (the last path component of each entry and of each image id)"}
    if limited:
        report["missing"]["note"] = ("the dataset was loaded with limit_per_class: names left out by the limit count "
                                     "as missing and the max_missing limit is not applied")
    return roles, report
