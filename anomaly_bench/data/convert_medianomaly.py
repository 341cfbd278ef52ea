"""Converters for the two MedIAnomaly datasets that are not shipped as ``images/`` + ``data.json``: ISIC 2018
Task 3 (the official ISIC challenge download) and BraTS 2021 (MedIAnomaly's ``BraTS2021.tar.gz``). Each writes a
``data.json`` (:mod:`anomaly_bench.data.data_json`) into the download folder whose entries are paths relative to
that folder, so nothing is copied or linked; the cards ``medianomaly_isic2018`` / ``medianomaly_brats2021`` read
it with ``images_dir: .`` (the ``medianomaly`` format reads each entry from that sub-path of ``images_dir``).
CLI: ``anomaly-bench convert medianomaly-isic2018 SRC`` / ``anomaly-bench convert medianomaly-brats2021 SRC``.

The lists are those of MedIAnomaly's own loaders (``reconstruction/dataloaders/dataload.py``, classes
``ISIC2018`` and ``BraTSAD``, github.com/caiyu6666/MedIAnomaly):

* ISIC 2018 Task 3: normal = nevus (column ``NV`` of the one-hot ground-truth CSV is 1), abnormal = every other
  class (``NV`` is 0). ``train/0`` = the NV rows of ``ISIC2018_Task3_Training_GroundTruth.csv`` (images in
  ``ISIC2018_Task3_Training_Input/``, ``<image>.jpg``); ``test/0`` / ``test/1`` = the NV / non-NV rows of
  ``ISIC2018_Task3_Test_GroundTruth.csv`` (images in ``ISIC2018_Task3_Test_Input/``). The Training set's non-NV
  images and the Validation set are not used. ``test_split="Validation"`` tests on the Validation set instead (a
  deviation, for downloads without the Test set).
* BraTS 2021: ``train/0`` = every image in ``train/`` (healthy slices), ``test/0`` = ``test/normal/``,
  ``test/1`` = ``test/tumor/``; ``test/annotation/`` holds the tumour masks (not labels; not listed).

Neither protocol has an unlabeled set A (MedIAnomaly trains on the normal training images alone), so the file has
no ``train/unlabeled`` key: the faithful output. Empty ``unlabeled`` lists would be refused by the data.json
validator, and filling set A from images MedIAnomaly does not use (ISIC's non-NV training images) would change the
protocol. With no set A the suite's transductive setting and any method trained on A have nothing to train on.

Every problem is a :class:`DataError` naming the path at fault and what to do.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from anomaly_bench.core.errors import DataError
from anomaly_bench.data.data_json import file_name, read_data_json
from anomaly_bench.data.image_io import is_image_name

DATA_JSON = "data.json"
ISIC_URL = "https://challenge.isic-archive.com/data/#2018"
ISIC_NORMAL_CLASS = "NV"  # melanocytic nevus: MedIAnomaly's normal class
ISIC_TEST_SPLITS = ("Test", "Validation")
BRATS_URL = "https://zenodo.org/records/12677223"


@dataclass
class Conversion:
    """What a converter did: the data.json path, the entries per key, whether the file was (re)written, notes."""

    path: Path
    counts: dict[str, int]
    written: bool
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {n}" for k, n in self.counts.items())
        state = "wrote" if self.written else "unchanged (same lists already there):"
        return f"{state} {self.path} ({counts})"


def _found(folder: Path) -> list[str]:
    try:
        return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:12]
    except OSError:
        return []


def _source(src: str | Path, what: str, expected: str) -> Path:
    src = Path(src).expanduser()
    if not src.is_dir():
        where = "a file, not a folder" if src.exists() else "no such folder"
        raise DataError(f"{src}: {where}; pass the folder of the {what} download (expected inside: {expected})")
    if (src / DATA_JSON).is_file() and (src / "images").is_dir():
        raise DataError(f"{src}: already in the medianomaly layout (images/ + {DATA_JSON}): nothing to convert; "
                        f"load it as it is (format: medianomaly)")
    return src


def _other_layout(src: Path, kind: str) -> str:
    """A hint when ``src`` holds the other converter's layout (or a case folder of ``kind``'s own)."""
    if kind != "medianomaly-brats2021" and (src / "train").is_dir() and (src / "test").is_dir():
        return " (this looks like MedIAnomaly's BraTS2021 folder: use `anomaly-bench convert medianomaly-brats2021`)"
    if kind != "medianomaly-isic2018" and list(src.glob("ISIC2018_Task3_*")):
        return " (this looks like the ISIC 2018 Task 3 download: use `anomaly-bench convert medianomaly-isic2018`)"
    return ""


def _rel(src: Path, path: Path) -> str:
    return os.path.relpath(path, src).replace(os.sep, "/")


def _check_files(src: Path, entries: list[str], listed_by: Path, fix: str) -> None:
    missing = [e for e in entries if not (src / e).is_file()]
    if missing:
        raise DataError(f"{src / Path(missing[0]).parent}: {len(missing)} of the {len(entries)} images that "
                        f"{listed_by} lists are not there (first: {missing[:3]}); {fix}")


# ----------------------------------------------------------------------------------------------- ISIC 2018
def _isic_csv(src: Path, split: str) -> Path:
    name = f"ISIC2018_Task3_{split}_GroundTruth"
    for path in (src / name / f"{name}.csv", src / f"{name}.csv"):
        if path.is_file():
            return path
    raise DataError(f"{src / name / (name + '.csv')}: label CSV not found (found in {src}: {_found(src)}); download "
                    f"'{split} Ground Truth' of Task 3 from {ISIC_URL} and unzip it into {src}")


def _isic_rows(path: Path) -> list[tuple[str, int]]:
    """``[(image id, 1 if NV else 0)]`` of one Task 3 ground-truth CSV."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc}); re-download it from {ISIC_URL}") from None
    cols = list(rows[0]) if rows else []
    if not rows or "image" not in cols or ISIC_NORMAL_CLASS not in cols:
        raise DataError(f"{path}: not an ISIC 2018 Task 3 ground-truth CSV (columns {cols}, {len(rows)} rows; need "
                        f"'image' and the one-hot class columns, '{ISIC_NORMAL_CLASS}' among them); re-download it "
                        f"from {ISIC_URL}")
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            value = float(row[ISIC_NORMAL_CLASS])
        except (TypeError, ValueError):
            value = -1.0
        if value not in (0.0, 1.0) or not (row["image"] or "").strip():
            raise DataError(f"{path}: line {i}: image {row.get('image')!r}, {ISIC_NORMAL_CLASS} "
                            f"{row.get(ISIC_NORMAL_CLASS)!r}; expected an image id and a one-hot 0/1 value")
        out.append((row["image"].strip(), int(value)))
    return out


def isic2018_lists(src: str | Path, test_split: str = "Test") -> tuple[dict[str, Any], list[str]]:
    """The data.json mapping of MedIAnomaly's ISIC 2018 Task 3 protocol (see the module docstring) for the
    download in ``src``, and notes. ``test_split``: ``Test`` (MedIAnomaly) or ``Validation`` (a deviation)."""
    if test_split not in ISIC_TEST_SPLITS:
        raise DataError(f"ISIC 2018 test split {test_split!r}: use one of {list(ISIC_TEST_SPLITS)}")
    src = _source(src, "ISIC 2018 Task 3", "ISIC2018_Task3_Training_Input/, ISIC2018_Task3_Training_GroundTruth/, "
                                           "ISIC2018_Task3_Test_Input/, ISIC2018_Task3_Test_GroundTruth/")
    keys = {"Training": ("train/0", None), test_split: ("test/0", "test/1")}
    lists: dict[str, list[str]] = {}
    notes = []
    for split, (normal_key, abnormal_key) in keys.items():
        images = src / f"ISIC2018_Task3_{split}_Input"
        if not images.is_dir():
            other = [s for s in ISIC_TEST_SPLITS if s != split and (src / f"ISIC2018_Task3_{s}_Input").is_dir()]
            hint = (f"; {other[0]} images are there: `--isic-test-split {other[0].lower()}` tests on them (a "
                    f"deviation from MedIAnomaly, which tests on the Test set)" if other and split != "Training"
                    else "")
            raise DataError(f"{images}: folder not found (found in {src}: {_found(src)})"
                            f"{_other_layout(src, 'medianomaly-isic2018')}; download '{split} Data' of Task 3 from "
                            f"{ISIC_URL} and unzip it into {src}{hint}")
        gt = _isic_csv(src, split)
        rows = _isic_rows(gt)
        entries = {label: [f"{_rel(src, images)}/{image}.jpg" for image, nv in rows if nv == label]
                   for label in (0, 1)}
        lists[normal_key] = entries[1]
        if abnormal_key:
            lists[abnormal_key] = entries[0]
        else:
            notes.append(f"{len(entries[0])} non-{ISIC_NORMAL_CLASS} Training images are not used (MedIAnomaly "
                         f"trains on the {ISIC_NORMAL_CLASS} images only; there is no unlabeled set)")
        _check_files(src, [e for k in (normal_key, abnormal_key) if k for e in lists[k]], gt,
                     f"unzip the whole '{split} Data' of Task 3 from {ISIC_URL}")
    if test_split != "Test":
        notes.append("tested on the Validation set: a deviation from MedIAnomaly, which tests on the Test set")
    for key in ("train/0", "test/0", "test/1"):
        if not lists[key]:
            raise DataError(f"{src}: the ground-truth CSVs give no image for {key} (normal = {ISIC_NORMAL_CLASS} "
                            f"= 1); are they the Task 3 CSVs?")
    return {"train": {"0": lists["train/0"]}, "test": {"0": lists["test/0"], "1": lists["test/1"]}}, notes


# ----------------------------------------------------------------------------------------------- BraTS 2021
def _images_in(folder: Path) -> tuple[list[str], list[str]]:
    names = sorted(os.listdir(folder))
    images = [n for n in names if is_image_name(n) and (folder / n).is_file()]
    return images, [n for n in names if n not in images and not n.startswith(".")]


def brats2021_lists(src: str | Path) -> tuple[dict[str, Any], list[str]]:
    """The data.json mapping of MedIAnomaly's BraTS 2021 protocol (see the module docstring) for the extracted
    ``BraTS2021.tar.gz`` in ``src``, and notes."""
    src = _source(src, "MedIAnomaly BraTS2021.tar.gz", "train/, test/normal/, test/tumor/, test/annotation/")
    fix = f"extract MedIAnomaly's BraTS2021.tar.gz ({BRATS_URL}) and pass its BraTS2021/ folder"
    folders = {"train/0": src / "train", "test/0": src / "test" / "normal", "test/1": src / "test" / "tumor"}
    lists: dict[str, list[str]] = {}
    notes = []
    for key, folder in folders.items():
        if not folder.is_dir():
            volumes = list((src / "test").glob("*/*flair.nii.gz")) if (src / "test").is_dir() else []
            why = (" (this is the NIfTI-volume layout of an older MedIAnomaly version, which the suite does not "
                   "read)" if volumes else "")
            parent = folder.parent if folder.parent.is_dir() else src
            raise DataError(f"{folder}: folder not found (found in {parent}: {_found(parent)}){why}"
                            f"{_other_layout(src, 'medianomaly-brats2021')}; {fix}")
        images, other = _images_in(folder)
        if not images:
            raise DataError(f"{folder}: no image files (found: {other[:5]}); MedIAnomaly's layout has the PNG slices "
                            f"directly in train/, test/normal/ and test/tumor/; {fix}")
        if other:
            notes.append(f"{_rel(src, folder)}/: {len(other)} entries that are not image files left out "
                         f"(first: {other[:3]})")
        lists[key] = [f"{_rel(src, folder)}/{n}" for n in images]
    if not (src / "test" / "annotation").is_dir():
        notes.append("test/annotation/ (the tumour masks) is absent: labels do not need it")
    notes.append("no unlabeled set: MedIAnomaly trains on train/ alone")
    return {"train": {"0": lists["train/0"]}, "test": {"0": lists["test/0"], "1": lists["test/1"]}}, notes


# ------------------------------------------------------------------------------------------------- writing
def _check_unique(src: Path, data: dict[str, Any]) -> None:
    """The suite matches data.json entries by file name: two entries with one file name cannot be told apart."""
    seen: dict[str, str] = {}
    for names in (data["train"]["0"], data["test"]["0"], data["test"]["1"]):
        for name in names:
            base = file_name(name)
            if base in seen:
                raise DataError(f"{src}: two images share the file name {base!r} ({seen[base]} and {name}); the "
                                f"suite matches data.json entries by file name, so rename one of them")
            seen[base] = name


def write_data_json(src: str | Path, data: dict[str, Any], force: bool = False) -> tuple[Path, bool]:
    """Write ``data`` to ``src/data.json`` (validated by reading it back); ``(path, written)``. An existing file
    with the same lists is kept (``written`` False); a different one is replaced only with ``force``."""
    src = Path(src)
    _check_unique(src, data)
    path = src / DATA_JSON
    text = json.dumps(data, indent=1) + "\n"
    if path.exists():
        try:
            same = json.loads(path.read_text(encoding="utf-8")) == data
        except (OSError, ValueError):
            same = False
        if same:
            return path, False
        if not force:
            raise DataError(f"{path}: a different {DATA_JSON} is already there; move it away or pass --force to "
                            f"replace it")
    tmp = path.with_name(f".{DATA_JSON}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{path}: cannot write ({exc.strerror or exc}); make {src} writable") from None
    read_data_json(path)
    return path, True


#: CLI name -> (lists builder, dataset card that loads the result)
CONVERTERS: dict[str, tuple[Callable[..., tuple[dict[str, Any], list[str]]], str]] = {
    "medianomaly-isic2018": (isic2018_lists, "medianomaly_isic2018"),
    "medianomaly-brats2021": (brats2021_lists, "medianomaly_brats2021"),
}


def convert(kind: str, src: str | Path, force: bool = False, **options: Any) -> Conversion:
    """Run the converter ``kind`` (a key of :data:`CONVERTERS`) on the download ``src``; ``options`` go to it
    (``test_split`` for ISIC)."""
    if kind not in CONVERTERS:
        raise DataError(f"converter {kind!r}: unknown; use one of {sorted(CONVERTERS)}")
    build, card = CONVERTERS[kind]
    data, notes = build(src, **options)
    path, written = write_data_json(Path(src).expanduser(), data, force=force)
    counts = {"train/0": len(data["train"]["0"]), "test/0": len(data["test"]["0"]), "test/1": len(data["test"]["1"])}
    notes.append(f"load it with the card {card} (root: this folder, or --data-root naming the folder that holds "
                 f"MedIAnomaly-Data/), or any card with `format: medianomaly` and `images_dir: .`")
    return Conversion(path=path, counts=counts, written=written, notes=notes)
