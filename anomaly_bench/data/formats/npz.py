"""``npz``: MedMNIST-style arrays: ``<split>_images`` ``(N, H, W)`` or ``(N, H, W, C)`` and ``<split>_labels``
``(N,)`` / ``(N, 1)`` (or ``(N, K)`` multi-label) for ``splits`` (default ``[train, val, test]``).

Label values in ``healthy_labels`` (default ``[0]``) are healthy, everything else diseased; multi-label rows
are healthy when no finding is set. ``roles_from_splits`` (default ``{train: train, val: train, test: test}``,
``false`` for none) records the file's own split in ``ds.roles``. Ids are ``"<split>/<index:06d>"``; no
subject ids (MedMNIST has none). Images are resized with the same antialiased filter as image files
(``image_size`` must be a power of two >= 32, so the 28 px MedMNIST images are up-sampled to 32 px).
The file is small, so nothing is cached.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data.format_tools import limit_indices
from anomaly_bench.data.image_io import Preprocessing, pil_to_gray, preprocess, quantize, to_model_range
from anomaly_bench.data.records import PREDEFINED_ROLES, ImageDataset

CARD_KEYS = {"file", "splits", "healthy_labels", "roles_from_splits"}
DEFAULT_ROLES = {"train": "train", "val": "train", "test": "test"}


def find_npz(root: Path, name: str | None, where: str) -> Path:
    if root.is_file():
        return root
    if name:
        p = root / name
        if not p.is_file():
            raise DataError(f"{p}: npz file not found (card key `file` in {where})")
        return p
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        raise DataError(f"{root}: expected exactly one .npz file, found {[f.name for f in found]}; set `file` in "
                        f"{where}")
    return found[0]


def _to_gray_array(a: np.ndarray, path: Path, key: str, prep: Preprocessing) -> list:
    """Per-image Pillow images (mode L / F) from an ``(N, H, W[, C])`` array."""
    from PIL import Image

    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] not in (3, 4)):
        raise DataError(f"{path}: '{key}' must be (N, H, W) or (N, H, W, 3|4), got {a.shape}")
    out = []
    for x in a:
        if x.dtype == np.uint8:
            im = Image.fromarray(x, mode="L" if x.ndim == 2 else ("RGB" if x.shape[-1] == 3 else "RGBA"))
        elif x.ndim == 2 and np.issubdtype(x.dtype, np.integer):
            im = Image.fromarray(x.astype(np.int32), mode="I")
        elif x.ndim == 2:
            im = Image.fromarray(x.astype(np.float32), mode="F")
        else:
            raise DataError(f"{path}: '{key}': colour images must be uint8, got {x.dtype}")
        out.append(pil_to_gray(im, prep))
    return out


def check_npz_archive(path: Path) -> None:
    """An npz file is a zip archive of .npy arrays: say what the file is when it is not one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from None
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: this is a single .npy array renamed .npz, not an npz archive; save the images and "
                        f"labels with numpy.savez(path, train_images=..., train_labels=...)")
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise DataError(f"{path}: not an npz archive (a zip of .npy arrays; this file starts with {head!r}); "
                        f"point the card at the MedMNIST-style .npz file or re-download it")


def check_labels(labs: np.ndarray, path: Path, key: str, where: str) -> np.ndarray:
    """Labels must be finite whole numbers (a class code listed in ``healthy_labels`` or a diseased one)."""
    if labs.dtype.kind not in "biuf":
        raise DataError(f"{path}: '{key}' holds {labs.dtype} values, not numbers; labels must be integer class "
                        f"codes (healthy ones listed in `healthy_labels` in {where}, every other one diseased)")
    if labs.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(labs) | (labs != np.round(labs)))
        if len(bad):
            i = tuple(int(v) for v in bad[0])
            raise DataError(f"{path}: '{key}'[{', '.join(map(str, i))}] is {labs[i]!r}: labels must be integer class "
                            f"codes (healthy ones listed in `healthy_labels` in {where}, every other one diseased); "
                            f"fix the labels in the file")
    return labs


def check_pixels(imgs: np.ndarray, path: Path, key: str, min_side: int) -> None:
    """Finite pixels, and images at least ``min_side`` px wide and high (as for image files)."""
    if imgs.ndim >= 3 and min(imgs.shape[1:3]) < min_side:
        raise DataError(f"{path}: '{key}' images are {imgs.shape[2]}x{imgs.shape[1]} px, smaller than the minimum "
                        f"side of {min_side} px (preprocessing.min_side); use larger images")
    if imgs.dtype.kind == "f":
        bad = np.argwhere(~np.isfinite(imgs))
        if len(bad):
            i = tuple(int(v) for v in bad[0])
            raise DataError(f"{path}: '{key}'[{', '.join(map(str, i))}] is {imgs[i]!r} ({len(bad)} non-finite "
                            f"pixel(s) in all); replace NaN/inf pixels in the file")
    elif imgs.dtype.kind not in "biu":
        raise DataError(f"{path}: '{key}' holds {imgs.dtype} values, not pixel numbers")


@register_format("npz")
def load_npz(card: dict[str, Any], root: Path) -> ImageDataset:
    where = card.get("_source", "card")
    path = find_npz(root, card.get("file"), where)
    splits = card.get("splits") or ["train", "val", "test"]
    healthy_labels = set(card.get("healthy_labels", [0]))
    role_map = card.get("roles_from_splits", DEFAULT_ROLES)
    if role_map is True or role_map is None:
        role_map = DEFAULT_ROLES
    if role_map is not False:
        bad = sorted(set(role_map.values()) - set(PREDEFINED_ROLES))
        if bad:
            raise ConfigError(f"{where}: roles_from_splits maps to unknown role(s) {bad}")
    prep = Preprocessing.from_card(card.get("preprocessing"))
    size = card["image_size"]
    check_npz_archive(path)
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: cannot read the npz file ({type(exc).__name__}: {exc}); re-download it") from None
    present = [s for s in splits if f"{s}_images" in keys]
    if not present:
        raise DataError(f"{path}: none of the keys {[f'{s}_images' for s in splits]} found (keys: {sorted(keys)}); "
                        f"set `splits` in {where}")
    stored, labels, ids, roles, sha, classes = [], [], [], [], [], []
    for s in present:
        if f"{s}_labels" not in keys:
            raise DataError(f"{path}: '{s}_images' has no matching '{s}_labels' array")
        try:
            imgs, labs = z[f"{s}_images"], z[f"{s}_labels"]
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: cannot read '{s}_images'/'{s}_labels' ({exc}); re-download the file") from None
        if len(imgs) != len(labs):
            raise DataError(f"{path}: '{s}_images' has {len(imgs)} images but '{s}_labels' {len(labs)} labels")
        labs = check_labels(np.asarray(labs), path, f"{s}_labels", where)
        check_pixels(np.asarray(imgs), path, f"{s}_images", prep.min_side)
        if labs.ndim == 2 and labs.shape[1] > 1:  # multi-label (e.g. ChestMNIST): healthy = no finding
            lab = (labs != 0).any(axis=1).astype(np.int64)
            names = ["|".join(map(str, np.flatnonzero(r))) or "none" for r in labs]
        else:
            flat = labs.reshape(-1)
            lab = np.array([0 if int(v) in healthy_labels else 1 for v in flat], dtype=np.int64)
            names = [str(int(v)) for v in flat]
        keep = limit_indices(lab.tolist(), card.get("limit_per_class"))
        imgs, lab = imgs[keep], lab[keep]
        classes.extend(names[i] for i in keep)
        for i, im in zip(keep, _to_gray_array(np.asarray(imgs), path, f"{s}_images", prep)):
            stored.append(preprocess(im, size, prep))
            ids.append(f"{s}/{int(i):06d}")
        sha.extend(hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in imgs)
        labels.append(lab)
        roles.extend([role_map.get(s, "") if role_map is not False else ""] * len(lab))
    dtype = "uint8" if all(a.dtype == np.uint8 for a in stored) else "float16"
    arr = np.stack([a if a.dtype == np.uint8 and dtype == "uint8" else
                    quantize(a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0), dtype)
                    for a in stored])
    images = torch.from_numpy(to_model_range(arr)[:, None])
    return ImageDataset(card.get("name", path.stem), images, np.concatenate(labels), ids, None, None,
                        np.asarray(roles, dtype=object) if role_map is not False else None, None, classes,
                        {"file_sha256": sha, "skipped_images": [], "source_file": str(path)})


load_npz.card_keys = CARD_KEYS
