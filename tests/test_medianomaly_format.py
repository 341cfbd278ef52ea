"""The ``medianomaly`` format (MedIAnomaly's images/ + data.json download layout): format guessing for
``--dataset <folder>``, labels and split from the file, and an end-to-end CLI run over a synthetic folder whose
published split keeps a test image with an exact copy in training (reproduce mode), with no hold-out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from anomaly_bench.cli import main
from anomaly_bench.core.errors import DataError
from anomaly_bench.data.loading import list_cards, load_dataset, resolve_card
from anomaly_bench.data.split import SplitConfig, make_split

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
#: (key, count, abnormal?) of the synthetic data.json
LAYOUT = (("train/0", 14, False), ("train/unlabeled/0", 4, False), ("train/unlabeled/1", 4, True),
          ("test/0", 8, False), ("test/1", 8, True))


def picture(seed: int, abnormal: bool) -> Image.Image:
    """A smooth grey background; abnormal images add a bright blob at a random place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    a = 0.35 + 0.1 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy + rng.uniform(0, 6))
    a += rng.normal(0, 0.02, a.shape)
    if abnormal:
        cx, cy = rng.uniform(0.3, 0.7, 2)
        a += 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.08 ** 2))
    return Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8))


def medianomaly_folder(root: Path, copy_test_from_train: bool = True, unlisted: int = 2) -> dict[str, list[str]]:
    """images/ + data.json as MedIAnomaly ships them. With ``copy_test_from_train`` the first test/0 file is a
    byte copy of the first train/0 file (the published-split leak the reproduce mode keeps)."""
    (root / "images").mkdir(parents=True)
    lists: dict[str, list[str]] = {}
    seed = 0
    for key, n, abnormal in LAYOUT:
        names = []
        for _ in range(n):
            seed += 1
            name = f"{'abn' if abnormal else 'nor'}_{seed:03d}.png"
            picture(seed, abnormal).save(root / "images" / name)
            names.append(name)
        lists[key] = names
    if copy_test_from_train:
        (root / "images" / lists["test/0"][0]).write_bytes((root / "images" / lists["train/0"][0]).read_bytes())
    for i in range(unlisted):  # files no list names: no label, not loaded, counted
        picture(1000 + i, False).save(root / "images" / f"extra_{i}.png")
    data = {"train": {"0": lists["train/0"], "unlabeled": {"0": lists["train/unlabeled/0"],
                                                           "1": lists["train/unlabeled/1"]}},
            "test": {"0": lists["test/0"], "1": lists["test/1"]}}
    (root / "data.json").write_text(json.dumps(data))
    return lists


def test_folder_is_guessed_and_labels_and_split_come_from_data_json(tmp_path):
    lists = medianomaly_folder(tmp_path / "Set")
    card = resolve_card(str(tmp_path / "Set"))
    assert card["format"] == "medianomaly"
    ds = load_dataset(card, image_size=SIZE)
    assert len(ds) == sum(n for _, n, _ in LAYOUT)  # the unlisted extra_*.png are not loaded
    label = dict(zip(ds.ids, ds.labels.tolist()))
    for key, _, abnormal in LAYOUT:
        assert {label[name] for name in lists[key]} == {int(abnormal)}
    split = make_split(ds, SplitConfig(), seed=0)
    role = dict(zip(ds.ids, split.roles))
    assert {role[n] for n in lists["train/0"]} == {"healthy"}
    assert {role[n] for n in lists["train/unlabeled/0"] + lists["train/unlabeled/1"]} == {"mixed"}
    assert {role[n] for n in lists["test/0"] + lists["test/1"]} == {"test"}
    assert split.report["published"]["unlisted_files_not_loaded"]["n"] == 2
    assert split.counts()["holdout_healthy"] == {"healthy": 0, "diseased": 0}
    # the byte copy across train/0 and test/0 is kept (taken as given) and counted
    assert split.report["published_split_cross_role_duplicates"]["test_with_training_copy"]["exact"] == 1
    # use_predefined_roles: false -> the suite's own split of the same labelled images: leak-free
    own = make_split(ds, SplitConfig(use_predefined_roles=False, test_size=10), seed=0)
    assert "published" not in own.report
    assert own.roles[ds.ids.index(lists["train/0"][0])] == own.roles[ds.ids.index(lists["test/0"][0])]


def test_a_folder_without_data_json_is_refused_with_the_layout(tmp_path):
    medianomaly_folder(tmp_path / "Set")
    (tmp_path / "Set" / "data.json").unlink()
    card = {"name": "m", "format": "medianomaly", "root": str(tmp_path / "Set")}
    with pytest.raises(DataError, match=r"data\.json and images/"):
        load_dataset(card, image_size=SIZE)


def test_the_medianomaly_cards_are_listed_as_absent_without_error():
    rows = {c["name"]: c for c in list_cards()}
    for name in ("rsna", "vincxr", "brain_tumor", "lag", "isic2018", "camelyon16", "brats2021"):
        row = rows[f"medianomaly_{name}"]
        assert "error" not in row, row
        card = resolve_card(f"medianomaly_{name}")
        assert card["root"].startswith("../shared/data/MedIAnomaly-Data/")
        assert card["download"] and card["license"] and card["image_size"] == 64


def test_cli_run_end_to_end_on_a_medianomaly_folder(tmp_path):
    lists = medianomaly_folder(tmp_path / "Set")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--dataset", str(tmp_path / "Set"), "--method", "autoencoder",
                                    "--profile", "smoke", "--seeds", "0", "--device", "cpu", "--image-size",
                                    str(SIZE), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())["datasets"]["Set"]
    counts = info["splits"]["0"]
    assert counts["healthy"]["healthy"] == len(lists["train/0"])
    assert counts["mixed"] == {"healthy": len(lists["train/unlabeled/0"]), "diseased": len(lists["train/unlabeled/1"])}
    assert counts["test"] == {"healthy": len(lists["test/0"]), "diseased": len(lists["test/1"])}
    published = info["published_split"]
    assert published["source"] == "data_json" and published["holdout"].startswith("none")
    assert published["cross_role_duplicates"]["test_with_training_copy"]["exact"] == 1
    assert info["leakage"]["0"]["n_test_with_training_twin"] >= 1  # the leakage check sees the same copy
    dup = json.loads((out / "splits" / "Set_duplicates.json").read_text())
    groups = dup["published_split_cross_role_duplicates"]["groups"]
    assert any(lists["test/0"][0] in " ".join(g["images"]) for g in groups)
    job = json.loads((out / "jobs/Set/autoencoder/seed0/job.json").read_text())
    assert job["status"] == "done"
    scores = __import__("pandas").read_csv(out / "jobs/Set/autoencoder/seed0/scores_inductive.csv")
    assert len(scores) == 16 and scores["threshold"].isna().all()  # no hold-out: no label-free threshold
    table = (out / "table.md").read_text()
    assert "published split taken as given: 1 test image(s) have an exact copy in training (1 in set B" in table
    assert "the published split has no hold-out" in table
    assert "kept each in one split role" not in table
    # a finished job without a threshold is n/a with the reason, not "failed"
    assert "| n/a | n/a | n/a | n/a |" in table and "failed |" not in table
    assert "n/a in Precision, Recall, Specificity and F1 of Set (inductive)" in table
    assert "| n/a / n/a | n/a |" in (out / "table_paper.md").read_text()
