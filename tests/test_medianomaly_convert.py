"""``anomaly-bench convert medianomaly-isic2018 | medianomaly-brats2021``: tiny synthetic downloads in the layouts
MedIAnomaly reads (ISIC 2018 Task 3 images + one-hot CSVs; BraTS2021.tar.gz's train/ and test/normal|tumor|
annotation), converted, then loaded through the shipped cards with a data-root override; and the refusals, each
naming the path at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from anomaly_bench.cli import CONVERT_KINDS, main
from anomaly_bench.core.errors import DataError
from anomaly_bench.data.convert_medianomaly import CONVERTERS
from anomaly_bench.data.loading import load_dataset
from anomaly_bench.data.split import SplitConfig, make_split

CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
#: (ISIC split, [(image id, class)]): NV is MedIAnomaly's normal class
ISIC = {"Training": [(f"ISIC_00{i:05d}", c) for i, c in enumerate("NV NV NV NV NV MEL BCC BKL".split())],
        "Test": [(f"ISIC_01{i:05d}", c) for i, c in enumerate("NV NV NV MEL DF VASC AKIEC".split())],
        "Validation": [(f"ISIC_02{i:05d}", c) for i, c in enumerate("NV NV MEL".split())]}
BRATS = {"train": 6, "test/normal": 3, "test/tumor": 4}


def run(*args: str):
    return CliRunner().invoke(main, ["convert", *map(str, args)])


def picture(seed: int, rgb: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = (rng.random((20, 20, 3) if rgb else (20, 20)) * 255).astype(np.uint8)
    return Image.fromarray(a)


def isic_download(root: Path, splits=("Training", "Test", "Validation")) -> Path:
    """The ISIC challenge zips unzipped into ``root``: <split>_Input/*.jpg (+ the licence texts the zips hold) and
    <split>_GroundTruth/<split>_GroundTruth.csv with one-hot float columns."""
    for k, split in enumerate(splits):
        images = root / f"ISIC2018_Task3_{split}_Input"
        images.mkdir(parents=True)
        (images / "LICENSE.txt").write_text("CC-BY-NC\n")
        gt = root / f"ISIC2018_Task3_{split}_GroundTruth"
        gt.mkdir()
        lines = ["image," + ",".join(CLASSES)]
        for i, (image, cls) in enumerate(ISIC[split]):
            picture(100 * k + i, rgb=True).save(images / f"{image}.jpg", quality=95)
            lines.append(image + "," + ",".join("1.0" if c == cls else "0.0" for c in CLASSES))
        (gt / f"ISIC2018_Task3_{split}_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def brats_download(root: Path) -> Path:
    """BraTS2021.tar.gz extracted: PNG slices in train/, test/normal/, test/tumor/; masks in test/annotation/."""
    seed = 1000
    for sub, n in BRATS.items():
        (root / sub).mkdir(parents=True)
        for i in range(n):
            seed += 1
            picture(seed).save(root / sub / f"BraTS2021_{seed:05d}_flair_{i}.png")
            if sub == "test/tumor":
                (root / "test/annotation").mkdir(exist_ok=True)
                picture(seed + 7).save(root / "test/annotation" / f"BraTS2021_{seed:05d}_seg_{i}.png")
    return root


def names(split: str, normal: bool) -> list[str]:
    return [f"ISIC2018_Task3_{split}_Input/{i}.jpg" for i, c in ISIC[split] if (c == "NV") == normal]


def test_the_cli_kinds_are_the_converters():
    assert set(CONVERT_KINDS) == set(CONVERTERS)


def test_isic2018_lists_are_medianomalys_and_the_card_loads_them(tmp_path):
    src = isic_download(tmp_path / "MedIAnomaly-Data" / "ISIC2018_Task3")
    res = run("medianomaly-isic2018", src)
    assert res.exit_code == 0, res.output
    assert "train/0: 5, test/0: 3, test/1: 4" in res.output and "3 non-NV Training images are not used" in res.output
    data = json.loads((src / "data.json").read_text())
    # MedIAnomaly: train = NV rows of the Training CSV only; test = the Test CSV, NV -> 0, other classes -> 1
    assert data == {"train": {"0": names("Training", True)},
                    "test": {"0": names("Test", True), "1": names("Test", False)}}
    assert "unlabeled" not in data["train"]  # no set A in their protocol (empty lists would be refused)
    ds = load_dataset("medianomaly_isic2018", data_root=tmp_path, image_size=32)
    label = dict(zip(ds.ids, ds.labels.tolist()))
    assert sorted(label) == sorted(names("Training", True) + names("Test", True) + names("Test", False))
    assert {label[n] for n in names("Test", False)} == {1} and {label[n] for n in names("Training", True)} == {0}
    split = make_split(ds, SplitConfig(), seed=0)
    counts = split.counts()
    assert counts["healthy"] == {"healthy": 5, "diseased": 0} and counts["test"] == {"healthy": 3, "diseased": 4}
    assert counts["mixed"] == {"healthy": 0, "diseased": 0}
    # the Training non-NV and the Validation images are there but unlisted: left out and counted
    assert split.report["published"]["unlisted_files_not_loaded"]["n"] == 3 + len(ISIC["Validation"])
    # a second run finds the same lists and leaves the file alone
    again = run("medianomaly-isic2018", src)
    assert again.exit_code == 0 and "unchanged" in again.output


def test_isic2018_validation_split_is_an_explicit_deviation(tmp_path):
    src = isic_download(tmp_path / "isic", splits=("Training", "Validation"))
    res = run("medianomaly-isic2018", src)  # MedIAnomaly tests on Test: refused, with the way out
    assert res.exit_code == 2 and "ISIC2018_Task3_Test_Input" in res.output
    assert "--isic-test-split validation" in res.output and "Traceback" not in res.output
    res = run("medianomaly-isic2018", src, "--isic-test-split", "validation")
    assert res.exit_code == 0, res.output
    assert "deviation" in res.output
    assert json.loads((src / "data.json").read_text())["test"] == {"0": names("Validation", True),
                                                                   "1": names("Validation", False)}


def test_brats2021_lists_are_medianomalys_and_the_card_loads_them(tmp_path):
    src = brats_download(tmp_path / "MedIAnomaly-Data" / "BraTS2021")
    (src / "train" / "notes.txt").write_text("not an image")
    res = run("medianomaly-brats2021", src)
    assert res.exit_code == 0, res.output
    assert "train/0: 6, test/0: 3, test/1: 4" in res.output and "no unlabeled set" in res.output
    data = json.loads((src / "data.json").read_text())
    assert set(data) == {"train", "test"} and set(data["train"]) == {"0"}
    for key, sub in (("0", "test/normal"), ("1", "test/tumor")):
        assert data["test"][key] == sorted(f"{sub}/{p.name}" for p in (src / sub).glob("*.png"))
    assert data["train"]["0"] == sorted(f"train/{p.name}" for p in (src / "train").glob("*.png"))
    ds = load_dataset("medianomaly_brats2021", data_root=tmp_path, image_size=32)
    assert len(ds) == 13 and int(ds.labels.sum()) == 4
    split = make_split(ds, SplitConfig(), seed=0)
    role = dict(zip(ds.ids, split.roles))
    assert {role[n] for n in data["train"]["0"]} == {"healthy"}
    assert {role[n] for n in data["test"]["0"] + data["test"]["1"]} == {"test"}
    assert split.report["published"]["unlisted_files_not_loaded"]["n"] == 4  # the tumour masks


def test_an_existing_different_data_json_is_kept_unless_forced(tmp_path):
    src = brats_download(tmp_path / "BraTS2021")
    (src / "data.json").write_text('{"train": {"0": ["x.png"]}, "test": {"0": ["y.png"], "1": ["z.png"]}}')
    res = run("medianomaly-brats2021", src)
    assert res.exit_code == 2 and str(src / "data.json") in res.output and "--force" in res.output
    assert "x.png" in (src / "data.json").read_text()
    assert run("medianomaly-brats2021", src, "--force").exit_code == 0
    assert len(json.loads((src / "data.json").read_text())["train"]["0"]) == 6


def _drop(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


@pytest.mark.parametrize("case", ["no folder", "no csv", "bad csv", "no training images", "missing image",
                                  "already converted"])
def test_isic2018_refusals_name_the_path(tmp_path, case):
    src = isic_download(tmp_path / "isic")
    gt = src / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    named = {"no folder": tmp_path / "nowhere", "no csv": gt, "bad csv": gt,
             "no training images": src / "ISIC2018_Task3_Training_Input",
             "missing image": src / "ISIC2018_Task3_Test_Input", "already converted": src}[case]
    expect = {"no folder": "no such folder", "no csv": "label CSV not found", "bad csv": "not an ISIC 2018 Task 3",
              "no training images": "folder not found", "missing image": "are not there",
              "already converted": "nothing to convert"}[case]
    if case in ("no csv", "no training images"):
        _drop(named)
    elif case == "bad csv":
        gt.write_text("image,melanoma\nISIC_0100000,1\n")
    elif case == "missing image":
        (named / "ISIC_0100004.jpg").unlink()
    elif case == "already converted":
        (src / "images").mkdir()
        (src / "data.json").write_text("{}")
    res = run("medianomaly-isic2018", src if case != "no folder" else named)
    assert res.exit_code == 2, res.output
    assert str(named) in res.output and expect in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("case", ["no tumor folder", "empty train", "volume layout", "shared file name",
                                  "test split option"])
def test_brats2021_refusals_name_the_path(tmp_path, case):
    src = brats_download(tmp_path / "BraTS2021")
    args: list[str] = []
    named, expect = src / "test" / "tumor", "folder not found"
    if case in ("no tumor folder", "volume layout"):
        _drop(named)
        if case == "volume layout":  # an older MedIAnomaly release: test/<case>/*flair.nii.gz volumes
            (src / "test" / "BraTS2021_00001").mkdir()
            (src / "test" / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").write_bytes(b"")
            expect = "NIfTI-volume layout"
    elif case == "empty train":
        named, expect = src / "train", "no image files"
        for p in named.iterdir():
            p.unlink()
    elif case == "shared file name":
        first = sorted((src / "test" / "normal").iterdir())[0]
        shutil.copy(first, src / "train" / first.name)
        named, expect = src, "share the file name"
    else:
        args, named, expect = ["--isic-test-split", "validation"], Path("medianomaly-brats2021"), "not of"
    res = run("medianomaly-brats2021", src, *args)
    assert res.exit_code == 2, res.output
    assert str(named) in res.output and expect in res.output and "Traceback" not in res.output
    assert not (src / "data.json").exists()


def test_the_wrong_converter_points_to_the_right_one(tmp_path):
    brats = brats_download(tmp_path / "BraTS2021")
    res = run("medianomaly-isic2018", brats)
    assert res.exit_code == 2 and str(brats / "ISIC2018_Task3_Training_Input") in res.output
    assert "convert medianomaly-brats2021" in res.output
    isic = isic_download(tmp_path / "isic")
    res = run("medianomaly-brats2021", isic)
    assert res.exit_code == 2 and str(isic / "train") in res.output and "convert medianomaly-isic2018" in res.output


def test_a_card_whose_folder_is_not_converted_says_how(tmp_path):
    brats_download(tmp_path / "MedIAnomaly-Data" / "BraTS2021")
    with pytest.raises(DataError, match=r"data\.json.*anomaly-bench convert medianomaly-brats2021"):
        load_dataset("medianomaly_brats2021", data_root=tmp_path, image_size=32)
