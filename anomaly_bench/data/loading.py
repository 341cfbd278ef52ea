"""Dataset cards -> :class:`ImageDataset`: card lookup and validation, data-root resolution, dispatch to the
registered format loader, duplicate detection.

A *card* is a YAML mapping (``datasets/<name>.yaml``)::

    name: brain_tumor_mri
    format: class_folder            # a loader registered with @register_format
    root: ../shared/data/brain_tumor_mri
    download: "where to get the data"
    image_size: 64
    preprocessing: {crop_top: 0.0, pad: 0, square: crop}
    classes: {healthy: [notumor], diseased: [glioma, meningioma, pituitary]}
    split: {test_size: 0.2, use_predefined_roles: false}   # read by anomaly_bench.data.split
    dedup: true                     # or {near: true, hamming: 0, corr: 0.99}
    # + the format's own keys (e.g. subject_regex, roles_from_dirs for class_folder)

``spec`` may be a card name (looked up in ``config_dirs("datasets")``), a path to a card YAML, or a raw data
path whose format is guessed (``.npz`` -> npz; a folder with ``train/pos`` -> brainomaly; with ``data.json`` and
``images/`` -> medianomaly; with ``train.txt`` -> covidx; with ``Data_Entry_2017*.csv`` -> chestxray14; class
folders of NIfTI volumes -> brain_subjects; otherwise class_folder with healthy classes guessed from their names,
the mapping printed to stderr). A bare name is always a card name; write ``./name`` for a folder of that name.

Root resolution: a relative card ``root`` is relative to the repository root (``../shared/data/<set>``; for an
installed wheel, which has no checkout, to the working directory),
else to the card file's folder. ``data_root`` (CLI ``--data-root``) or ``$ANOMALY_BENCH_DATA_ROOT`` names the
folder that holds the sets and replaces the ``../shared/data`` prefix (for other relative roots: their
parent). Absolute roots are used as written. A card without ``root`` (the phantom) gets ``root=None``. Split
files named in the card (``split.data_json``, ``split.manifest``) are resolved the same way
(:func:`resolve_data_path`).

Loader contract (``loader(card, root) -> ImageDataset``): the card it receives is validated and carries the
resolved ``image_size`` (int), ``on_bad_image``, ``limit_per_class`` and ``preprocessing`` (format defaults
merged in), plus ``_cache`` (bool). Optional loader attributes: ``card_keys`` (the format's own card keys;
when present, any other key is rejected) and ``default_preprocessing``. A loader may put ``file_sha256``
(one hex digest per image) and ``skipped_images`` (``[(path, reason)]``) in ``ds.meta``; ``load_dataset``
consumes the first for exact duplicate detection.

``dedup`` (see :mod:`anomaly_bench.data.dedup` for the measurements behind the defaults): ``true`` (default for
real data), ``false``, or a mapping with ``enabled``, ``near`` (pHash link, default true), ``hamming`` (pHash
radius in bits, 0-16, default 0 = identical hashes) and ``corr`` (link images whose 32 px thumbnails have a
Pearson correlation >= corr, a number in (0, 1], default 0.99; null turns it off). ``near: false`` without an
explicit ``corr`` means exact copies only. Duplicate groups are the connected components over all links.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from anomaly_bench.core.config import check_keys, checkout_dir, config_dirs, read_yaml
from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.registry import DATASET_FORMATS
from anomaly_bench.data import cache as cache_mod
from anomaly_bench.data.dedup import DEFAULT_CORR, DEFAULT_HAMMING, find_duplicates
from anomaly_bench.data.format_tools import HEALTHY_NAMES, guess_classes
from anomaly_bench.data.image_io import NIFTI_EXTENSIONS, ON_BAD_IMAGE, Preprocessing
from anomaly_bench.data.records import ImageDataset

DEFAULT_DATA_PREFIX = "../shared/data"
DATA_ROOT_ENV = "ANOMALY_BENCH_DATA_ROOT"

#: Keys every card may have (format loaders add their own through ``loader.card_keys``).
COMMON_KEYS = {"name", "format", "description", "root", "download", "license", "citation", "notes",
               "image_size", "paper_image_size", "preprocessing", "classes", "split", "dedup", "on_bad_image",
               "limit_per_class"}
#: Keys of the ``split`` section (consumed by ``anomaly_bench.data.split``).
SPLIT_KEYS = {"test_size", "test_diseased_fraction", "mixed_size", "mixed_diseased_fraction", "mixed_diseased",
              "mixed_healthy", "healthy_size", "holdout_fraction", "use_predefined_roles", "manifest", "data_json",
              "data_json_max_missing"}
DEDUP_KEYS = {"enabled", "near", "hamming", "corr"}
CLASSES_KEYS = {"healthy", "diseased"}


# ------------------------------------------------------------------------------------------------ cards
def card_files() -> list[Path]:
    """Every ``*.yaml`` card in ``config_dirs("datasets")`` (earlier folders shadow later ones by name)."""
    seen: dict[str, Path] = {}
    for d in config_dirs("datasets"):
        if d.is_dir():
            for f in sorted(d.glob("*.yaml")):
                seen.setdefault(f.stem, f)
    return list(seen.values())


def _format_loader(fmt: str) -> Callable:
    return DATASET_FORMATS.get(fmt)


def validate_card(card: dict[str, Any], where: str) -> dict[str, Any]:
    """Check keys (with their path and the allowed keys) and simple types; returns a copy."""
    card = dict(card)
    if "format" not in card:
        raise ConfigError(f"{where}: missing required key 'format'")
    loader = _format_loader(card["format"])
    fmt_keys = getattr(loader, "card_keys", None)
    public = {k: v for k, v in card.items() if not str(k).startswith("_")}
    if fmt_keys is not None:
        check_keys(public, COMMON_KEYS | set(fmt_keys), where)
    if "image_size" in card:
        check_image_size(card["image_size"], f"{where}: image_size")
    if card.get("on_bad_image", "error") not in ON_BAD_IMAGE:
        raise ConfigError(f"{where}: on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {card['on_bad_image']!r}")
    lim = card.get("limit_per_class")
    if lim is not None and not (isinstance(lim, int) and not isinstance(lim, bool) and lim > 0):
        raise ConfigError(f"{where}: limit_per_class must be a positive integer or null, got {lim!r}")
    Preprocessing.from_card({**getattr(loader, "default_preprocessing", {}), **(card.get("preprocessing") or {})},
                            where=f"{where}: preprocessing")
    split = card.get("split") or {}
    if not isinstance(split, dict):
        raise ConfigError(f"{where}: split must be a mapping with keys {sorted(SPLIT_KEYS)}")
    check_keys(split, SPLIT_KEYS, f"{where}: split")
    classes = card.get("classes")
    if classes is not None:
        if not isinstance(classes, dict):
            raise ConfigError(f"{where}: classes must be a mapping {{healthy: [...], diseased: [...]}}")
        check_keys(classes, CLASSES_KEYS, f"{where}: classes")
        for k in CLASSES_KEYS:
            v = classes.get(k) or []
            if isinstance(v, str) or not all(isinstance(x, (str, int)) for x in v):
                raise ConfigError(f"{where}: classes.{k} must be a list of class names, got {v!r}")
        both = {str(x).lower() for x in classes.get("healthy") or []} & \
               {str(x).lower() for x in classes.get("diseased") or []}
        if both:
            raise ConfigError(f"{where}: class(es) {sorted(both)} are listed as both healthy and diseased")
    dedup_settings(card, where)
    return card


def check_image_size(size: Any, where: str) -> int:
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= 32 and size & (size - 1) == 0):
        raise ConfigError(f"{where}: image size must be a power of two >= 32 (the GAN baselines down-sample by "
                          f"2 several times), got {size!r}")
    return size


def dedup_settings(card: dict[str, Any], where: str = "card") -> dict[str, Any]:
    """``{"enabled", "near", "hamming", "corr"}`` from the card's ``dedup`` (default: on, except for the
    phantom). ``near: false`` without an explicit ``corr`` turns the correlation link off too (exact only)."""
    raw = card.get("dedup", card.get("format") != "phantom")
    out = {"enabled": True, "near": True, "hamming": DEFAULT_HAMMING, "corr": DEFAULT_CORR}
    if isinstance(raw, bool):
        out["enabled"] = raw
    elif isinstance(raw, dict):
        check_keys(raw, DEDUP_KEYS, f"{where}: dedup")
        out.update(raw)
        if not out["near"] and "corr" not in raw:
            out["corr"] = None
        if not isinstance(out["hamming"], int) or not 0 <= out["hamming"] <= 16:
            raise ConfigError(f"{where}: dedup.hamming must be an integer in [0, 16], got {out['hamming']!r}")
        c = out["corr"]
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1):
            raise ConfigError(f"{where}: dedup.corr must be a number in (0, 1] (thumbnail correlation, e.g. "
                              f"corr: 0.99) or null to turn the correlation link off, got {c!r}")
    else:
        raise ConfigError(f"{where}: dedup must be true, false or a mapping with keys {sorted(DEDUP_KEYS)}")
    return out


def resolve_card(spec: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A validated card dict from a card name, a card YAML path, a raw data path, or a dict. The card's
    origin is kept in ``card["_source"]``."""
    if isinstance(spec, dict):
        card = dict(spec)
        card.setdefault("_source", "<dict>")
        card.setdefault("name", "dataset")
        return validate_card(card, f"dataset card {card.get('name')}")
    s = str(spec)
    p = Path(s).expanduser()
    if s.endswith((".yaml", ".yml")):
        if not p.is_file():
            raise ConfigError(f"{s}: dataset card file not found")
        card = read_yaml(p)
        card.setdefault("name", p.stem)
        card["_source"] = str(p)
        return validate_card(card, str(p))
    if "/" not in s and os.sep not in s:  # a bare name is a card first; a same-named folder needs ./name
        for f in card_files():
            if f.stem == s:
                card = read_yaml(f)
                card.setdefault("name", f.stem)
                card["_source"] = str(f)
                return validate_card(card, str(f))
    if p.exists():
        return validate_card(guess_card(p), f"auto-detected card for {p}")
    names = sorted(f.stem for f in card_files())
    raise ConfigError(f"dataset '{s}': not a card name (known: {names}; looked in "
                      f"{[str(d) for d in config_dirs('datasets')]}), not a card .yaml file and not an existing "
                      f"data path")


def guess_card(path: Path) -> dict[str, Any]:
    """Build a card for a raw data path (printing the guessed class mapping for class folders)."""
    path = Path(path)
    card: dict[str, Any] = {"name": path.stem.removesuffix(".nii") or "dataset", "root": str(path.resolve()),
                            "_source": f"auto-detected from {path}", "_raw_path": True}
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return {**card, "format": "npz"}
        raise ConfigError(f"{path}: a data path must be a folder or an .npz file")
    if (path / "train" / "pos").is_dir():
        return {**card, "format": "brainomaly"}
    if (path / "data.json").is_file() and (path / "images").is_dir():
        return {**card, "format": "medianomaly"}
    if (path / "train.txt").is_file():
        return {**card, "format": "covidx"}
    if list(path.glob("Data_Entry_2017*.csv")):
        return {**card, "format": "chestxray14"}
    healthy, diseased = guess_classes(path, NIFTI_EXTENSIONS)
    fmt = "brain_subjects" if healthy or diseased else "class_folder"
    if fmt == "class_folder":
        healthy, diseased = guess_classes(path)
    if not healthy or not diseased:
        raise DataError(f"{path}: cannot guess the classes (healthy folders found: {healthy}, others: {diseased}); "
                        f"healthy folders are recognised by the names {sorted(HEALTHY_NAMES)}. Write a dataset "
                        f"card with `classes: {{healthy: [...], diseased: [...]}}` (see datasets/*.yaml)")
    print(f"{path}: guessed classes: healthy = {healthy}, diseased = {diseased} (write a dataset card to change "
          f"this)", file=sys.stderr)
    return {**card, "format": fmt, "classes": {"healthy": healthy, "diseased": diseased}}


# ------------------------------------------------------------------------------------------------- roots
def _set_subpath(root: str) -> Path:
    norm = Path(root).as_posix()
    prefix = DEFAULT_DATA_PREFIX + "/"
    if norm.startswith(prefix):
        return Path(norm[len(prefix):])
    return Path(Path(root).name)


def resolve_root(card: dict[str, Any], data_root: str | Path | None = None) -> Path | None:
    """The data location for ``card`` (see the module docstring for the rules); ``None`` for a card without
    ``root`` (generated data such as the phantom)."""
    root = card.get("root")
    if not root:
        return None
    p = Path(str(root)).expanduser()
    if card.get("_raw_path") or p.is_absolute():
        return p
    override = data_root if data_root is not None else os.environ.get(DATA_ROOT_ENV) or None
    if override is not None:
        return Path(override).expanduser() / _set_subpath(str(root))
    return _relative_path(p, card.get("_source", ""))


def _relative_path(p: Path, source: str | None, cwd_too: bool = False) -> Path:
    """A relative card path: relative to the checkout (an installed wheel has none: the working directory), else
    to the card file's folder (else, with ``cwd_too``, the working directory); the first that exists."""
    base = checkout_dir()
    candidates = [(base if base is not None else Path.cwd()) / p]
    if source and Path(source).is_file():
        candidates.append(Path(source).resolve().parent / p)
    if cwd_too:
        candidates.append(Path.cwd() / p)
    for c in candidates:
        if c.exists():
            return Path(os.path.normpath(c))
    return Path(os.path.normpath(candidates[0]))


def resolve_data_path(path: str, card_source: str | None = None, data_root: str | Path | None = None) -> Path:
    """A file a card names besides its root (``split.data_json``, ``split.manifest``), resolved like ``root``:
    absolute as written; under ``../shared/data/`` the ``data_root`` / ``$ANOMALY_BENCH_DATA_ROOT`` override
    applies; else relative to the checkout, the card's folder or the working directory (the first that exists)."""
    p = Path(str(path)).expanduser()
    if p.is_absolute():
        return p
    override = data_root if data_root is not None else os.environ.get(DATA_ROOT_ENV) or None
    if override is not None and Path(str(path)).as_posix().startswith(DEFAULT_DATA_PREFIX + "/"):
        return Path(override).expanduser() / _set_subpath(str(path))
    return _relative_path(p, card_source, cwd_too=True)


def root_present(card: dict[str, Any], data_root: str | Path | None = None) -> bool:
    """True when the card's data is there (always for a card without ``root``, e.g. the phantom)."""
    root = resolve_root(card, data_root)
    return root is None or root.exists()


def missing_data_error(card: dict[str, Any], root: Path, data_root: str | Path | None = None) -> DataError:
    name = card.get("name", "dataset")
    how = card.get("download") or "the card has no `download` entry; see the dataset's publication"
    rel = _set_subpath(str(card.get("root", root)))
    return DataError(
        f"dataset '{name}': data not found at {root} (card {card.get('_source')}, root: {card.get('root')}). "
        f"Get it: {str(how).strip()} Then put it at {root}, or pass --data-root FOLDER (or set "
        f"{DATA_ROOT_ENV}) naming the folder that holds '{rel.as_posix()}'.")


# ------------------------------------------------------------------------------------------------ loading
def load_dataset(spec: str | Path | dict[str, Any], data_root: str | Path | None = None,
                 image_size: int | None = None, on_bad_image: str | None = None,
                 limit_per_class: int | None = None, cache: bool = True) -> ImageDataset:
    """Load a dataset by card name / card path / raw path / dict into an :class:`ImageDataset`.

    ``image_size`` defaults to the card's (64 when absent); ``on_bad_image`` to the card's (``error``);
    ``limit_per_class`` (dev/tests) keeps an evenly spaced subset of each class. Runs duplicate detection when
    the card's ``dedup`` is on (default for real data): ``ds.dup_groups`` and ``ds.meta["duplicates"]``.
    ``ds.meta`` also holds ``card``, ``card_source``, ``root``, ``data_root``, ``limit_per_class``, ``preprocessing``,
    ``skipped_images``, ``content_sha256`` (per-image file hashes, or None) and ``load_seconds``.
    """
    t0 = time.perf_counter()
    card = resolve_card(spec)
    where = str(card.get("_source"))
    root = resolve_root(card, data_root)
    if root is not None and not root.exists():
        raise missing_data_error(card, root, data_root)
    size = check_image_size(image_size if image_size is not None else card.get("image_size", 64),
                            f"{where}: image_size")
    bad = on_bad_image or card.get("on_bad_image", "error")
    if bad not in ON_BAD_IMAGE:
        raise ConfigError(f"on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {bad!r}")
    loader = _format_loader(card["format"])
    prep = {**getattr(loader, "default_preprocessing", {}), **(card.get("preprocessing") or {})}
    run_card = {**card, "image_size": size, "on_bad_image": bad, "preprocessing": prep, "_cache": bool(cache),
                "limit_per_class": limit_per_class if limit_per_class is not None else card.get("limit_per_class")}
    ds = loader(run_card, root)
    if not isinstance(ds, ImageDataset):
        raise DataError(f"format '{card['format']}' returned {type(ds).__name__}, not an ImageDataset")
    if ds.image_size != size or ds.images.shape[-2] != size:
        raise DataError(f"format '{card['format']}' returned {tuple(ds.images.shape[-2:])} images for "
                        f"image_size {size}")
    file_sha = ds.meta.pop("file_sha256", None)
    ds.meta["content_sha256"] = file_sha  # exact copies of a published split (published_split.published_cross_role)
    ds.meta.setdefault("skipped_images", [])
    ds.meta["card"] = {k: v for k, v in card.items() if not str(k).startswith("_")}
    ds.meta["card_source"] = where
    ds.meta["root"] = str(root) if root is not None else None
    ds.meta["data_root"] = str(data_root) if data_root is not None else None
    ds.meta["limit_per_class"] = run_card["limit_per_class"]
    ds.meta["preprocessing"] = Preprocessing.from_card(prep).as_dict()
    settings = dedup_settings(card, where)
    if settings["enabled"]:
        groups, report = cached_duplicates(ds, file_sha, settings, cache)
        ds.dup_groups = groups
        ds.meta["duplicates"] = report
    else:
        ds.meta["duplicates"] = {"enabled": False}
    if ds.meta["skipped_images"]:
        n = len(ds.meta["skipped_images"])
        print(f"warning: dataset '{ds.name}': skipped {n} unreadable image(s), e.g. "
              f"{ds.meta['skipped_images'][0][0]}: {ds.meta['skipped_images'][0][1]}", file=sys.stderr)
    ds.meta["load_seconds"] = round(time.perf_counter() - t0, 3)
    return ds


def cached_duplicates(ds: ImageDataset, file_sha: list[str] | None, settings: dict[str, Any],
                      cache: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`find_duplicates` through the cache. The key holds the per-image file hashes (which pin the
    pixels together with the preprocessing and size), ids, roles and labels; without file hashes the
    pixels themselves are hashed."""
    import hashlib

    h = hashlib.sha256()
    if file_sha is not None:
        h.update("\n".join(file_sha).encode())
        h.update(repr((tuple(ds.images.shape), ds.meta.get("preprocessing"))).encode())
    else:
        ds.images.fingerprint_update(h)
    h.update("\n".join(ds.ids).encode())
    h.update(ds.labels.tobytes())
    if ds.roles is not None:
        h.update("\n".join(map(str, ds.roles)).encode())
    key = {"what": "duplicates", "content": h.hexdigest(), "settings": settings}

    def compute():
        groups, report = find_duplicates(ds.images, content_hashes=file_sha, ids=ds.ids, roles=ds.roles,
                                         labels=ds.labels, near=settings["near"], hamming=settings["hamming"],
                                         corr=settings["corr"])
        return {"groups": groups}, report

    arrays, report = cache_mod.cached(key, compute, enabled=cache)
    return arrays["groups"].astype(np.int64), report


def list_cards() -> list[dict[str, Any]]:
    """One row per card: ``name, format, root, present, description`` (and ``error`` for a broken card)."""
    rows = []
    for f in card_files():
        try:
            card = read_yaml(f)
            card.setdefault("name", f.stem)
            card["_source"] = str(f)
            root = resolve_root(card)
            rows.append({"name": card["name"], "format": card.get("format"),
                         "root": str(root) if root is not None else None,
                         "present": root is None or root.exists(),
                         "description": " ".join(str(card.get("description", "")).split())})
        except (ConfigError, DataError) as exc:
            rows.append({"name": f.stem, "format": "?", "root": None, "present": False, "description": "",
                         "error": str(exc)})
    return rows
