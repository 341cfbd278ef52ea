"""Helpers shared by the format loaders (:mod:`anomaly_bench.data.formats`) and by
:func:`anomaly_bench.data.loading.guess_card`: building an :class:`ImageDataset` from image files, per-class
limits, subject ids from file names, and the class-folder names guessed from a raw folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.data.decode import decode_files
from anomaly_bench.data.image_io import IMAGE_EXTENSIONS, Preprocessing, is_image_name, walk
from anomaly_bench.data.records import ImageDataset

#: Folder names guessed as healthy when a raw folder is given (case-insensitive).
HEALTHY_NAMES = {"normal", "notumor", "no_tumor", "healthy", "neg", "negative", "no_finding", "good"}
#: Top-level folder names treated as split folders (not classes) when guessing a raw folder's classes.
SPLIT_DIR_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation"}


def walk_files(root: Path, extensions: tuple[str, ...]) -> dict[Path, list[str]]:
    """``{folder: [image file paths (str) directly in it]}`` for every folder under ``root`` (sorted, hidden
    skipped). File paths stay strings: pathlib costs more than the walk itself on 100k files."""
    return {Path(d): [os.path.join(d, f) for f in files if is_image_name(f, extensions)] for d, files in walk(root)}


def guess_classes(root: Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[list[str], list[str]]:
    """Class folder names under a raw folder: healthy ones by name (:data:`HEALTHY_NAMES`), others diseased.
    Classes are the top-level folders, or the second level below split folders (train/, Testing/, ...)."""
    names: set[str] = set()
    for d, files in walk_files(Path(root), extensions).items():
        if not files or d == root:
            continue
        parts = d.relative_to(root).parts
        level = 1 if parts[0].lower() in SPLIT_DIR_NAMES and len(parts) > 1 else 0
        names.add(parts[level])
    healthy = sorted(n for n in names if n.lower() in HEALTHY_NAMES)
    return healthy, sorted(names - set(healthy))


def build_from_files(card: dict[str, Any], root: Path, files: Sequence[Path], labels: Sequence[int], *,
                     ids: Sequence[str], subjects: Sequence[str] | None = None,
                     roles: Sequence[str] | None = None, classes: Sequence[str] | None = None,
                     meta: dict[str, Any] | None = None) -> ImageDataset:
    """Decode ``files`` (through the cache) and build the dataset, dropping skipped files from every list."""
    name = card.get("name", "dataset")
    if not files:
        raise DataError(f"dataset '{name}': no image files found under {root}; check the root and the card")
    dec = decode_files(files, card["image_size"], Preprocessing.from_card(card.get("preprocessing")),
                       on_bad_image=card.get("on_bad_image", "error"), cache=card.get("_cache", True),
                       desc=name, relative_to=root)
    k = dec.kept

    def pick(v):
        return None if v is None else [v[i] for i in k]

    if len(k) == 0:
        raise DataError(f"dataset '{name}': all {len(files)} image files were unreadable, e.g. "
                        f"{dec.skipped[0][0]}: {dec.skipped[0][1]}")
    ds = ImageDataset(name, ImageArray(dec.stored[:, None]), np.asarray(labels)[k], pick(list(ids)),
                      pick(list(subjects)) if subjects is not None else None, None,
                      np.asarray(pick(list(roles)), dtype=object) if roles is not None else None, None,
                      pick(list(classes)) if classes is not None else None,
                      {**(meta or {}), "skipped_images": dec.skipped, "file_sha256": dec.sha256})
    return ds


def limit_indices(keys: Sequence[Any], limit: int | None) -> np.ndarray:
    """Indices keeping at most ``limit`` items per key, evenly spaced through each key's items (so a subset
    still spans e.g. both Training/ and Testing/); all indices when ``limit`` is None."""
    keys = list(keys)
    if not limit:
        return np.arange(len(keys))
    by: dict[Any, list[int]] = {}
    for i, kk in enumerate(keys):
        by.setdefault(kk, []).append(i)
    out: list[int] = []
    for idx in by.values():
        if len(idx) > limit:
            pos = np.linspace(0, len(idx) - 1, limit).round().astype(int)
            idx = [idx[p] for p in pos]
        out.extend(idx)
    return np.sort(np.asarray(out, dtype=np.int64))


def compile_subject_patterns(patterns: str | Sequence[str] | None, where: str) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as exc:
            raise ConfigError(f"{where}: subject_regex {p!r} is not a valid regular expression ({exc})") from None
    return out


def subject_from_name(name: str, patterns: Sequence[re.Pattern]) -> str | None:
    """First pattern that matches (``re.search``) gives the subject: its captured groups joined by ``_``
    (or the whole match when it has no group); ``None`` when none matches."""
    for pat in patterns:
        m = pat.search(name)
        if m:
            groups = [g for g in m.groups() if g is not None]
            return "_".join(groups) if groups else m.group(0)
    return None
