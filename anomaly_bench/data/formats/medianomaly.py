"""``medianomaly``: MedIAnomaly's preprocessed download layout (Cai et al.; also DDAD-ASR, AE4AD): a folder with
``images/`` and ``data.json``::

    {"train": {"0": [known-normal files], "unlabeled": {"0": [normal], "1": [abnormal]}},
     "test":  {"0": [normal files], "1": [abnormal files]}}

Labels come from the file (``*/0`` healthy, ``*/1`` diseased) and so does the split: the runner uses the file's
roles (:func:`anomaly_bench.data.published_split.data_json_split`: train/0 -> healthy set B, train/unlabeled ->
mixed set A, test -> test, no hold-out by default) unless the split section says ``use_predefined_roles: false``
(the suite's own split over the same labelled images), or gives ``manifest`` / another ``data_json``. Only the files
the lists name are loaded; files of ``images/`` the lists do not name have no label and are left out (counted in the
split report as ``unlisted_files_not_loaded``); names whose file is missing are skipped and reported by the split,
which refuses more than ``split.data_json_max_missing`` of them. Ids are the file names (``images/`` holds no
folders in the MedIAnomaly data; an entry with folders is read from that sub-path of ``images/``).

Default preprocessing = MedIAnomaly's loader (``dataloaders/dataload.py``): ``Image.open(f).convert("L")
.resize((size, size), Image.BILINEAR)`` of the whole image (no crop: ``square: none``), then ToTensor +
Normalize(0.5, 0.5), i.e. ``[-1, 1]``. Channels: the suite decodes every image to one grey channel; MedIAnomaly
keeps ISIC2018 and Camelyon16 in RGB (``in_c 3``), which this format cannot. The ISIC2018 and BraTS2021 downloads
are not in this layout: ``anomaly-bench convert`` (:mod:`anomaly_bench.data.convert_medianomaly`) writes their
data.json with entries relative to the download folder, read with the card key ``images_dir: .``.

Card keys: ``data_json`` (default ``data.json``), ``images_dir`` (default ``images``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_bench.core.errors import DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.data_json import LISTS, file_name, read_data_json
from anomaly_bench.data.format_tools import build_from_files, limit_indices
from anomaly_bench.data.image_io import IMAGE_EXTENSIONS, is_image_name, walk
from anomaly_bench.data.records import ImageDataset

CARD_KEYS = {"data_json", "images_dir"}


@register_format("medianomaly")
def load_medianomaly(card: dict[str, Any], root: Path) -> ImageDataset:
    where = card.get("_source", "card")
    json_path = root / str(card.get("data_json") or "data.json")
    images = root / str(card.get("images_dir") or "images")
    if not json_path.is_file() or not images.is_dir():
        found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else []
        raise DataError(f"{root}: the medianomaly format needs {json_path.name} and {images.name}/ in the folder "
                        f"(MedIAnomaly's preprocessed RSNA, VinCXR, BrainTumor and LAG downloads); found {found} "
                        f"(card {where})" + (f". The card says: {str(card['download']).strip()}" if card.get("download")
                                             else ""))
    lists = read_data_json(json_path)
    items: list[tuple[str, int, str]] = []  # (file path, label, key)
    for key, _, label in LISTS:
        for name in lists.get(key, []):
            items.append((os.path.join(images, name), label, key))
    keep = limit_indices([it[2] for it in items], card.get("limit_per_class"))
    items = [items[i] for i in keep]
    present = [it for it in items if os.path.isfile(it[0])]
    if not present:
        raise DataError(f"{images}: none of the {len(items)} files that {json_path} lists is there (first: "
                        f"{items[0][0] if items else None}); is this the folder of that data.json?")
    listed = {file_name(n) for names in lists.values() for n in names}
    unlisted = [os.path.join(d, f) for d, files in walk(images) for f in files
                if is_image_name(f, IMAGE_EXTENSIONS) and f not in listed]
    files = [it[0] for it in present]
    ids = [os.path.relpath(f, images).replace(os.sep, "/") for f in files]
    meta = {"data_json": str(json_path),
            "data_json_unlisted_files": {"n": len(unlisted),
                                         "first": [os.path.relpath(f, images) for f in unlisted[:10]]}}
    return build_from_files(card, root, files, np.array([it[1] for it in present]), ids=ids,
                            classes=["healthy" if it[1] == 0 else "diseased" for it in present], meta=meta)


load_medianomaly.card_keys = CARD_KEYS
load_medianomaly.default_preprocessing = {"square": "none", "resample": "bilinear"}
