"""``covidx``: the COVID-Net COVIDx layout: ``train/`` and ``test/`` image folders plus ``train.txt`` /
``test.txt`` with rows ``patient_id filename class source`` (older releases: 3 columns, no source).

Classes: ``COVID-19`` / ``positive`` / ``covid`` -> diseased; ``normal`` / ``negative`` -> healthy. Non-COVID
``pneumonia`` rows (COVIDx up to v8) follow ``pneumonia``: ``exclude`` (default: the seed paper compares COVID
with healthy) or ``diseased``. Note: from COVIDx CXR-2 on, ``negative`` also contains non-COVID pneumonia and
cannot be told apart. Any other class is an error naming the file and line. Roles ``train`` / ``test`` come
from the lists; subjects are the patient ids (shared ids across sources merge, which can only make the split
more conservative). The paper's sizes (test 100 + 100, mixed A 1,570 COVID + 3,663 healthy, B = the other
healthy training images) belong in the card's ``split`` section.
Default preprocessing = HealthyGAN's ``data_loader.py``: crop the top 8 % of rows, central square crop, resize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.format_tools import build_from_files, limit_indices
from anomaly_bench.data.records import ImageDataset

CARD_KEYS = {"train_list", "test_list", "train_dir", "test_dir", "pneumonia"}
DISEASED = {"covid-19", "positive", "covid", "covid19"}
HEALTHY = {"normal", "negative"}
PNEUMONIA = {"pneumonia"}


def parse_row(line: str) -> tuple[str, str, str, str]:
    """``(patient_id, filename, class, source)``; file names with spaces are re-joined."""
    parts = line.split()
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], ""
    if len(parts) < 4:
        raise ValueError(f"expected 'patient_id filename class source', got {len(parts)} column(s)")
    # class is the second-to-last column when the file name holds spaces
    return parts[0], " ".join(parts[1:-2]), parts[-2], parts[-1]


def read_list(list_path: Path, image_dir: Path, role: str, pneumonia: str, on_bad_image: str,
              skipped: list[tuple[str, str]]) -> list[tuple[Path, int, str, str, str]]:
    """``[(file, label, patient, role, class)]`` for one split file; checks that every image exists."""
    if not list_path.is_file():
        raise DataError(f"{list_path}: split file not found; the COVIDx layout needs train.txt/test.txt next to "
                        f"the train/ and test/ folders (or set train_list/test_list in the card)")
    out = []
    with open(list_path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                patient, fname, cls, _source = parse_row(line)
            except ValueError as exc:
                raise DataError(f"{list_path}, line {lineno}: {exc}: {line.strip()!r}") from None
            c = cls.lower()
            if c in DISEASED:
                label = 1
            elif c in HEALTHY:
                label = 0
            elif c in PNEUMONIA:
                if pneumonia == "exclude":
                    continue
                label = 1
            else:
                raise DataError(f"{list_path}, line {lineno}: unknown class {cls!r} (known: COVID-19/positive, "
                                f"normal/negative, pneumonia)")
            f = image_dir / fname
            if not f.is_file():
                msg = f"{list_path}, line {lineno}: image {fname!r} not found at {f}"
                if on_bad_image == "skip":
                    skipped.append((str(f), f"named in {list_path.name} line {lineno} but missing"))
                    continue
                raise DataError(f"{msg}; restore the image, remove the line, or set `on_bad_image: skip` to leave "
                                f"missing images out")
            out.append((f, label, patient, role, cls))
    return out


@register_format("covidx")
def load_covidx(card: dict[str, Any], root: Path) -> ImageDataset:
    where = card.get("_source", "card")
    pneumonia = card.get("pneumonia", "exclude")
    if pneumonia not in ("exclude", "diseased"):
        raise ConfigError(f"{where}: pneumonia must be 'exclude' or 'diseased', got {pneumonia!r}")
    skipped: list[tuple[str, str]] = []
    items = []
    for role, lst, dd in (("train", card.get("train_list", "train.txt"), card.get("train_dir", "train")),
                          ("test", card.get("test_list", "test.txt"), card.get("test_dir", "test"))):
        items += read_list(root / lst, root / dd, role, pneumonia, card.get("on_bad_image", "error"), skipped)
    seen: dict[str, int] = {}
    for f, *_ in items:
        seen[str(f)] = seen.get(str(f), 0) + 1
    dup = [k for k, v in seen.items() if v > 1]
    if dup:
        raise DataError(f"{root}: image {dup[0]} is listed {seen[dup[0]]} times in the split files "
                        f"({len(dup)} such image(s)); each image must appear once")
    keep = limit_indices([(it[3], it[1]) for it in items], card.get("limit_per_class"))
    items = [items[i] for i in keep]
    files = [it[0] for it in items]
    ids = [f"{it[3]}/{it[0].name}" for it in items]
    ds = build_from_files(card, root, files, np.array([it[1] for it in items]), ids=ids,
                          subjects=[it[2] for it in items], roles=[it[3] for it in items],
                          classes=[it[4] for it in items])
    ds.meta["skipped_images"] = skipped + ds.meta.get("skipped_images", [])
    return ds


load_covidx.card_keys = CARD_KEYS
load_covidx.default_preprocessing = {"crop_top": 0.08, "square": "crop"}
