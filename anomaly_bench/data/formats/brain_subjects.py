"""``brain_subjects``: brain MRI by subject, as NIfTI volumes or as 2-D slices, for subject-level metrics.

* NIfTI: one ``.nii`` / ``.nii.gz`` per subject (subject id = file name without extension). Volumes are
  reoriented to RAS+ (nibabel ``as_closest_canonical``) so ``slice_axis: 2`` (default) gives axial slices,
  rotated so anterior is up.
* Slices: PNG/JPEG/... files named ``<subject><subject_separator><slice>.png`` (default separator ``__``, the
  seed paper's migraine layout); the slice number must be an integer.

Labels come from class folders (``classes: {healthy: [...], diseased: [...]}``, as ``class_folder``) or from
``labels_csv`` (relative to the root; columns ``subject,label`` where label is a class name from ``classes``,
``healthy``/``diseased`` or 0/1). ``slice_range: [lo, hi]``: floats in [0, 1] are fractions of each subject's
slices, integers are slice indices/numbers (``hi`` exclusive). ``clip_percentiles: [1, 99]`` clips each
subject's intensities at those percentiles of its non-zero voxels and rescales to [0, 1]; ``null`` leaves
slices as decoded (NIfTI volumes are then min-max scaled per volume, since raw MRI units are arbitrary).
Ids are ``<file>#<slice>`` for volumes and the relative path for slice files; ``ds.subjects`` holds the subject
ids so the harness can average slice scores per subject (the seed paper's subject score).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.registry import register_format
from anomaly_bench.data import cache as cache_mod
from anomaly_bench.data.decode import decode_files
from anomaly_bench.data.format_tools import limit_indices
from anomaly_bench.data.formats.class_folder import relative_id, scan_classes
from anomaly_bench.data.image_io import (
    BAD_IMAGE_FIX,
    IMAGE_EXTENSIONS,
    NIFTI_EXTENSIONS,
    Preprocessing,
    preprocess,
    quantize,
    read_volume,
    to_model_range,
    walk,
)
from anomaly_bench.data.records import ImageDataset

CARD_KEYS = {"labels_csv", "slice_range", "slice_axis", "clip_percentiles", "subject_separator", "extensions",
             "ignore_unknown_classes"}


def nifti_stem(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def slice_window(n: int, rng: Any, where: str) -> tuple[int, int]:
    """``[lo, hi)`` positions out of ``n`` for a ``slice_range`` of fractions or integers."""
    if rng is None:
        return 0, n
    if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
        raise ConfigError(f"{where}: slice_range must be [lo, hi], got {rng!r}")
    lo, hi = rng
    if all(isinstance(v, float) for v in rng):
        if not 0.0 <= lo < hi <= 1.0:
            raise ConfigError(f"{where}: fractional slice_range needs 0 <= lo < hi <= 1, got {rng!r}")
        a, b = int(round(lo * n)), int(round(hi * n))
        return a, max(b, a + 1) if n else 0
    if all(isinstance(v, int) and not isinstance(v, bool) for v in rng):
        if not 0 <= lo < hi:
            raise ConfigError(f"{where}: integer slice_range needs 0 <= lo < hi, got {rng!r}")
        return min(lo, n), min(hi, n)
    raise ConfigError(f"{where}: slice_range must be two floats (fractions) or two integers, got {rng!r}")


def normalise(stack: np.ndarray, clip: Any, where: str) -> np.ndarray:
    """Per-subject intensity normalisation of a float stack to [0, 1]."""
    stack = stack.astype(np.float32)
    if clip is None:
        lo, hi = float(stack.min()), float(stack.max())
    else:
        if not (isinstance(clip, (list, tuple)) and len(clip) == 2 and 0 <= clip[0] < clip[1] <= 100):
            raise ConfigError(f"{where}: clip_percentiles must be [low, high] with 0 <= low < high <= 100")
        fg = stack[stack > 0]
        lo, hi = (np.percentile(fg if fg.size else stack, clip).tolist())
    if hi <= lo:
        return np.zeros_like(stack)
    return np.clip((stack - lo) / (hi - lo), 0.0, 1.0)


def _labels_from_csv(card: dict[str, Any], root: Path, where: str) -> dict[str, tuple[str, int]]:
    path = root / card["labels_csv"]
    if not path.is_file():
        raise DataError(f"{path}: labels_csv not found (card {where})")
    classes = card.get("classes") or {}
    named = {str(c).lower(): (str(c), 0) for c in classes.get("healthy") or []}
    named |= {str(c).lower(): (str(c), 1) for c in classes.get("diseased") or []}
    named |= {"0": ("healthy", 0), "1": ("diseased", 1), "healthy": ("healthy", 0), "diseased": ("diseased", 1)}
    out = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"subject", "label"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: needs the columns 'subject' and 'label', got {reader.fieldnames}")
        for ln, r in enumerate(reader, 2):
            lab = str(r["label"]).strip().lower()
            if lab not in named:
                raise DataError(f"{path}, line {ln}: label {r['label']!r} is not 0/1, healthy/diseased or a class in "
                                f"`classes` of {where}")
            out[str(r["subject"]).strip()] = named[lab]
    return out


def _find(root: Path, exts: tuple[str, ...]) -> list[Path]:
    return [Path(d) / f for d, files in walk(root) for f in files if f.lower().endswith(exts)]


def _items(card: dict[str, Any], root: Path, exts: tuple[str, ...], key_of, where: str):
    """``[(file, class, label)]`` from class folders or labels_csv (``key_of(file)`` = subject id)."""
    if card.get("labels_csv"):
        table = _labels_from_csv(card, root, where)
        out = []
        for f in _find(root, exts):
            subj = key_of(f)
            if subj not in table:
                if card.get("ignore_unknown_classes"):
                    continue
                raise DataError(f"{f}: subject {subj!r} has no row in {card['labels_csv']}; add it or set "
                                f"`ignore_unknown_classes: true`")
            out.append((f, *table[subj]))
        return out
    return [(Path(f), c, lab) for f, c, lab, _ in scan_classes(card, root, exts)]


@register_format("brain_subjects")
def load_brain_subjects(card: dict[str, Any], root: Path) -> ImageDataset:
    where = card.get("_source", "card")
    if not root.is_dir():
        raise DataError(f"{root}: the brain_subjects format needs a folder")
    nifti = bool(_find(root, NIFTI_EXTENSIONS))
    if nifti:
        return _load_volumes(card, root, where)
    return _load_slices(card, root, where)


def _load_volumes(card: dict[str, Any], root: Path, where: str) -> ImageDataset:
    items = _items(card, root, NIFTI_EXTENSIONS, lambda f: nifti_stem(f.name), where)
    subjects = [nifti_stem(f.name) for f, _, _ in items]
    _check_unique_subjects(items, subjects)
    keep = limit_indices([c for _, c, _ in items], card.get("limit_per_class"))
    items, subjects = [items[i] for i in keep], [subjects[i] for i in keep]
    prep = Preprocessing.from_card(card.get("preprocessing"))
    size, axis = card["image_size"], int(card.get("slice_axis", 2))
    if axis not in (0, 1, 2):
        raise ConfigError(f"{where}: slice_axis must be 0, 1 or 2, got {axis}")
    files = [f for f, _, _ in items]

    def compute():
        stored, vol_idx, slc_idx, failed = [], [], [], []
        for v, f in enumerate(files):
            try:
                vol = read_volume(f)
            except DataError as exc:
                failed.append((str(f), str(exc).split(": ", 1)[-1]))
                continue
            lo, hi = slice_window(vol.shape[axis], card.get("slice_range"), where)
            sub = np.moveaxis(vol, axis, -1)[..., lo:hi]
            sub = normalise(sub, card.get("clip_percentiles"), where)
            for k in range(sub.shape[-1]):
                stored.append(quantize(preprocess(np.rot90(sub[..., k]), size, prep), "float16"))
                vol_idx.append(v)
                slc_idx.append(lo + k)
        arr = np.stack(stored) if stored else np.zeros((0, size, size), np.float16)
        return ({"stored": arr, "vol": np.asarray(vol_idx, np.int64), "slice": np.asarray(slc_idx, np.int64)},
                {"failed": failed})

    key = {"what": "brain_subjects_volumes", "files": cache_mod.file_signature(files, root), "image_size": size,
           "preprocessing": prep.as_dict(), "slice_range": card.get("slice_range"), "axis": axis,
           "clip": card.get("clip_percentiles")}
    arrays, info = cache_mod.cached(key, compute, enabled=card.get("_cache", True))
    skipped = [tuple(x) for x in info["failed"]]
    if skipped and card.get("on_bad_image", "error") == "error":
        raise DataError(f"{skipped[0][0]}: {skipped[0][1]}")
    vols, slcs = arrays["vol"], arrays["slice"]
    if len(vols) == 0:
        raise DataError(f"dataset '{card.get('name')}': no slices selected from {len(files)} volume(s) under {root}; "
                        f"check slice_range")
    ds = ImageDataset(card.get("name", "brain_subjects"), torch.from_numpy(to_model_range(arrays["stored"])[:, None]),
                      np.array([items[v][2] for v in vols]),
                      [f"{relative_id(files[v], root)}#{s:03d}" for v, s in zip(vols, slcs)],
                      [subjects[v] for v in vols], None, None, None, [items[v][1] for v in vols],
                      {"skipped_images": skipped, "n_subjects_loaded": len(set(vols.tolist()))})
    return ds


def _check_unique_subjects(items, subjects) -> None:
    seen: dict[str, Path] = {}
    for (f, _, _), s in zip(items, subjects):
        if s in seen and seen[s].parent != f.parent:
            raise DataError(f"{f}: subject {s!r} also appears at {seen[s]}; subject ids must be unique")
        seen.setdefault(s, f)


def _load_slices(card: dict[str, Any], root: Path, where: str) -> ImageDataset:
    sep = card.get("subject_separator", "__")
    exts = tuple(card.get("extensions") or IMAGE_EXTENSIONS)

    def subject_and_slice(f: Path) -> tuple[str, int]:
        stem = f.name.rsplit(".", 1)[0]
        if sep not in stem:
            raise DataError(f"{f}: slice file names must be <subject>{sep}<slice number>.png; rename it or set "
                            f"subject_separator in {where}")
        subj, num = stem.rsplit(sep, 1)
        try:
            return subj, int(num)
        except ValueError:
            raise DataError(f"{f}: slice number {num!r} after {sep!r} is not an integer") from None

    items = _items(card, root, exts, lambda f: subject_and_slice(f)[0], where)
    parsed = [subject_and_slice(f) for f, _, _ in items]
    by_subject: dict[str, list[int]] = {}
    for i, (s, _) in enumerate(parsed):
        by_subject.setdefault(s, []).append(i)
    classes_of = {s: {items[i][2] for i in idx} for s, idx in by_subject.items()}
    mixed = [s for s, c in classes_of.items() if len(c) > 1]
    if mixed:
        raise DataError(f"subject {mixed[0]!r} has slices labelled both healthy and diseased (e.g. "
                        f"{items[by_subject[mixed[0]][0]][0]}); a subject has one label")
    chosen: list[int] = []
    for idx in by_subject.values():
        idx = sorted(idx, key=lambda i: parsed[i][1])
        rng = card.get("slice_range")
        if rng is not None and all(isinstance(v, int) and not isinstance(v, bool) for v in rng):
            slice_window(10**9, rng, where)
            idx = [i for i in idx if rng[0] <= parsed[i][1] < rng[1]]
        else:
            lo, hi = slice_window(len(idx), rng, where)
            idx = idx[lo:hi]
        chosen.extend(idx)
    chosen.sort()
    # limit by subjects (never cut a subject's slices)
    subj_order = sorted(by_subject)
    subj_class = [items[by_subject[s][0]][1] for s in subj_order]
    keep_subj = {subj_order[i] for i in limit_indices(subj_class, card.get("limit_per_class"))}
    chosen = [i for i in chosen if parsed[i][0] in keep_subj]
    if not chosen:
        raise DataError(f"dataset '{card.get('name')}': no slices selected under {root}; check slice_range")
    files = [items[i][0] for i in chosen]
    dec = decode_files(files, card["image_size"], Preprocessing.from_card(card.get("preprocessing")),
                       on_bad_image=card.get("on_bad_image", "error"), cache=card.get("_cache", True),
                       desc=card.get("name", "slices"), relative_to=root)
    if len(dec.kept) == 0:
        raise DataError(f"all {len(files)} slice files were unreadable, e.g. {dec.skipped[0][0]}; {BAD_IMAGE_FIX}")
    kept = [chosen[k] for k in dec.kept]
    images = dec.images()[:, 0]
    subjects = [parsed[i][0] for i in kept]
    if card.get("clip_percentiles") is not None:
        groups: dict[str, list[int]] = {}
        for j, s in enumerate(subjects):
            groups.setdefault(s, []).append(j)
        for js in groups.values():
            stack = (images[js] + 1.0) / 2.0
            images[js] = normalise(stack, card["clip_percentiles"], where) * 2.0 - 1.0
    return ImageDataset(card.get("name", "brain_subjects"), torch.from_numpy(images[:, None].astype(np.float32)),
                        np.array([items[i][2] for i in kept]), [relative_id(items[i][0], root) for i in kept],
                        subjects, None, None, None, [items[i][1] for i in kept],
                        {"skipped_images": dec.skipped, "file_sha256": dec.sha256,
                         "n_subjects_loaded": len(set(subjects))})


load_brain_subjects.card_keys = CARD_KEYS
load_brain_subjects.default_preprocessing = {"square": "pad"}
