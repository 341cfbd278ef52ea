"""``brainomaly``: the HealthyGAN/Brainomaly folder layout.

``train/pos`` (diseased) + ``train/neg_mixed`` (healthy) form the mixed set A (role ``mixed``; their labels are
kept for transductive evaluation and are never shown to a method), ``train/neg`` is the healthy set B (role
``healthy``), ``test/pos`` (1) and ``test/neg`` (0) are the test set (role ``test``). The authors glob
``*png``; we take every image extension. Subjects come from ``<subject><subject_separator><slice>`` file names
(default separator ``__``, the migraine layout); other names are their own subject.
Default preprocessing = the authors' (Brainomaly ``data_loader.py``): pad 5 px with 0, central square crop,
bilinear resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.core.errors import DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.format_tools import build_from_files, limit_indices
from anomaly_bench.data.formats.class_folder import relative_id
from anomaly_bench.data.image_io import IMAGE_EXTENSIONS, is_image_name
from anomaly_bench.data.records import ImageDataset

CARD_KEYS = {"subject_separator", "extensions"}
#: (folder, label, role)
LAYOUT = (("train/pos", 1, "mixed"), ("train/neg_mixed", 0, "mixed"), ("train/neg", 0, "healthy"),
          ("test/pos", 1, "test"), ("test/neg", 0, "test"))


def subject_of(name: str, sep: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem.split(sep, 1)[0] if sep and sep in stem else stem


@register_format("brainomaly")
def load_brainomaly(card: dict[str, Any], root: Path) -> ImageDataset:
    where = card.get("_source", "card")
    exts = tuple(card.get("extensions") or IMAGE_EXTENSIONS)
    sep = card.get("subject_separator", "__")
    if not (root / "train").is_dir():
        raise DataError(f"{root}: the brainomaly format needs train/pos, train/neg_mixed, train/neg, test/pos and "
                        f"test/neg folders; train/ is missing (card {where})")
    items: list[tuple[Path, int, str, str]] = []
    for folder, label, role in LAYOUT:
        d = root / folder
        if not d.is_dir():
            continue
        files = sorted(p for p in d.iterdir() if p.is_file() and is_image_name(p.name, exts))
        if not files:
            raise DataError(f"{d}: folder exists but holds no images ({', '.join(exts)}); add images or remove it")
        items.extend((f, label, role, folder) for f in files)
    found = {it[3] for it in items}
    for need in ("train/neg",):
        if need not in found:
            raise DataError(f"{root / need}: missing: the healthy training set B must exist (layout: "
                            f"{[f for f, _, _ in LAYOUT]})")
    if "train/pos" not in found and "train/neg_mixed" not in found:
        raise DataError(f"{root}: neither train/pos nor train/neg_mixed exists: the mixed set A is empty")
    keep = limit_indices([it[3] for it in items], card.get("limit_per_class"))
    items = [items[i] for i in keep]
    files = [it[0] for it in items]
    subjects = [subject_of(f.name, sep) for f in files]
    roles = [it[2] for it in items]
    # the authors' layout assumes each subject's slices sit in one folder; report if not
    by_subject: dict[str, set[str]] = {}
    for s, r in zip(subjects, roles):
        by_subject.setdefault(s, set()).add(r)
    leaked = sorted(s for s, r in by_subject.items() if len(r) > 1)
    ds = build_from_files(card, root, files, np.array([it[1] for it in items]),
                          ids=[relative_id(f, root) for f in files], subjects=subjects, roles=roles,
                          classes=[it[3].split("/", 1)[1] for it in items],
                          meta={"subjects_in_several_roles": {"n": len(leaked), "examples": leaked[:10]}})
    return ds


load_brainomaly.card_keys = CARD_KEYS
load_brainomaly.default_preprocessing = {"pad": 5, "square": "crop"}
