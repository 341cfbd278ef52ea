"""``chestxray14``: NIH ChestX-ray14: ``Data_Entry_2017*.csv``, ``train_val_list.txt``, ``test_list.txt`` and the
PNGs anywhere below the root (the official archives unpack to ``images_001/images/...``; found recursively).

Only rows whose ``View Position`` is in ``view_positions`` (default ``[PA]``, the seed paper's protocol) are
used. ``Finding Labels == "No Finding"`` is healthy, any finding diseased. Subjects are the ``Patient ID``s.
Roles ``train`` / ``test`` come from the official lists (the lists are patient-disjoint); images in neither
list get no role. A listed image missing on disk is an error naming the CSV and the image, unless
``allow_missing_images: true`` (e.g. only some of the 12 archives were downloaded).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.core.errors import DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.format_tools import build_from_files, limit_indices
from anomaly_bench.data.image_io import walk
from anomaly_bench.data.records import ImageDataset

CARD_KEYS = {"csv", "train_val_list", "test_list", "view_positions", "allow_missing_images"}
COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def index_images(root: Path) -> dict[str, str]:
    """``{file name: path}`` of every PNG below ``root``; a name found twice is an error."""
    out: dict[str, str] = {}
    for dirpath, filenames in walk(root):
        for f in filenames:
            if f.lower().endswith(".png"):
                p = os.path.join(dirpath, f)
                if f in out:
                    raise DataError(f"{p}: the image name {f} is also at {out[f]}; remove one copy")
                out[f] = p
    return out


def read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise DataError(f"{path}: official split list not found; download train_val_list.txt and test_list.txt "
                        f"with the images (or set train_val_list/test_list in the card)")
    return {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}


@register_format("chestxray14")
def load_chestxray14(card: dict[str, Any], root: Path) -> ImageDataset:
    where = card.get("_source", "card")
    pattern = card.get("csv", "Data_Entry_2017*.csv")
    csvs = sorted(root.glob(pattern))
    if not csvs:
        raise DataError(f"{root}: no file matches {pattern!r} (the ChestX-ray14 label file Data_Entry_2017.csv); "
                        f"set `csv` in {where}")
    csv_path = csvs[-1]
    views = {str(v).upper() for v in card.get("view_positions", ["PA"])}
    train = read_list(root / card.get("train_val_list", "train_val_list.txt"))
    test = read_list(root / card.get("test_list", "test_list.txt"))
    both = train & test
    if both:
        raise DataError(f"{root}: {len(both)} image(s) are in both official lists, e.g. {sorted(both)[0]}")
    index = index_images(root)
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing_cols = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing_cols:
            raise DataError(f"{csv_path}: missing column(s) {missing_cols}; is this Data_Entry_2017.csv?")
        for lineno, r in enumerate(reader, 2):
            if r["View Position"].strip().upper() not in views:
                continue
            rows.append((lineno, r["Image Index"].strip(), r["Finding Labels"].strip(), r["Patient ID"].strip()))
    if not rows:
        raise DataError(f"{csv_path}: no rows with View Position in {sorted(views)}")
    missing = [(ln, name) for ln, name, _, _ in rows if name not in index]
    if missing:
        if not card.get("allow_missing_images", False):
            ln, name = missing[0]
            raise DataError(f"{csv_path}, line {ln}: image {name} not found below {root} ({len(missing)} of "
                            f"{len(rows)} {'/'.join(sorted(views))} images missing); download all image archives, "
                            f"or set `allow_missing_images: true` to use the images present")
        rows = [r for r in rows if r[1] in index]
        if not rows:
            raise DataError(f"{root}: none of the images named in {csv_path.name} is present")
    labels = [0 if f == "No Finding" else 1 for _, _, f, _ in rows]
    keep = limit_indices(labels, card.get("limit_per_class"))
    rows = [rows[i] for i in keep]
    names = [r[1] for r in rows]
    roles = ["train" if n in train else "test" if n in test else "" for n in names]
    ds = build_from_files(card, root, [index[n] for n in names], np.array([labels[i] for i in keep]), ids=names,
                          subjects=[r[3] for r in rows], roles=roles, classes=[r[2] for r in rows],
                          meta={"missing_images": len(missing), "csv": str(csv_path)})
    return ds


load_chestxray14.card_keys = CARD_KEYS
