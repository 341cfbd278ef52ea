"""``split: {data_json: ...}``: a DDAD / MedIAnomaly data.json as the split of any card. Errors name the file and
the key; names absent from the data are skipped and reported up to a limit; a published split is taken as given
(cross-role duplicates kept and counted) while the suite's own split still refuses them; the real BrainTumor
split file over ../shared/data/brain_tumor_mri (skipped with a reason when absent)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data.data_json import read_data_json
from anomaly_bench.data.loading import load_dataset
from anomaly_bench.data.published_split import read_manifest
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split import Split, SplitConfig, check_split, make_split, write_manifest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ fixtures
def toy_dataset(n_per: int = 10, dup: bool = False) -> ImageDataset:
    """``n_per`` healthy ``h_###.png`` and ``n_per`` diseased ``d_###.png`` images in class folders (ids with
    folders, as class_folder gives them). With ``dup``: h_000 and h_001 are pixel copies (one duplicate group) and
    h_002 / h_003 a near pair (another group, different pixels)."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2 * n_per, 1, 32, 32, generator=g) * 2 - 1
    ids = [f"Training/normal/h_{i:03d}.png" for i in range(n_per)] + \
          [f"Testing/tumor/d_{i:03d}.png" for i in range(n_per)]
    labels = np.r_[np.zeros(n_per), np.ones(n_per)].astype(int)
    groups = None
    if dup:
        images[1] = images[0]
        images[3] = images[2] * 0.98
        groups = np.full(2 * n_per, -1)
        groups[[0, 1]] = 0
        groups[[2, 3]] = 1
    return ImageDataset("toy", images, labels, ids, dup_groups=groups)


def data_json(train0, test0, test1, unl0=None, unl1=None) -> dict:
    d = {"train": {"0": train0}, "test": {"0": test0, "1": test1}}
    if unl0 is not None:
        d["train"]["unlabeled"] = {"0": unl0, "1": unl1}
    return d


def h(*i):
    return [f"h_{k:03d}.png" for k in i]


def d(*i):
    return [f"d_{k:03d}.png" for k in i]


GOOD = data_json(h(0, 2, 4, 5), h(1, 3, 6), d(0, 1, 2), unl0=h(7, 8), unl1=d(3, 4))


def split_of(tmp_path, content, ds=None, **cfg):
    path = tmp_path / "data.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return make_split(ds or toy_dataset(), SplitConfig.from_dict({"data_json": str(path), **cfg}), seed=0), path


def error_of(tmp_path, content, ds=None, **cfg) -> str:
    with pytest.raises(DataError) as ei:
        split_of(tmp_path, content, ds, **cfg)
    return str(ei.value)


# ----------------------------------------------------------------------------------------------- the roles
def test_roles_follow_the_lists_and_unlisted_images_are_unused(tmp_path):
    ds = toy_dataset(dup=False)
    split, path = split_of(tmp_path, GOOD, ds)
    role = {os.path.basename(i): r for i, r in zip(ds.ids, split.roles)}
    assert [role[n] for n in h(0, 2, 4, 5)] == ["healthy"] * 4
    assert {role[n] for n in h(7, 8) + d(3, 4)} == {"mixed"}
    assert {role[n] for n in h(1, 3, 6) + d(0, 1, 2)} == {"test"}
    assert {role[n] for n in h(9) + d(5, 6, 7, 8, 9)} == {"unused"}
    assert not any(r.startswith("holdout") for r in split.roles)  # the published protocol: no hold-out
    pub = split.report["published"]
    assert pub["source"] == "data_json" and pub["path"] == str(path) and pub["unlisted_images"] == 6
    assert pub["holdout"].startswith("none")
    # identical split for every seed: the file fixes it
    again = make_split(ds, SplitConfig(data_json=str(path)), seed=7)
    assert np.array_equal(again.roles, split.roles)


def test_holdout_fraction_carves_hold_outs_as_a_recorded_deviation(tmp_path):
    ds = toy_dataset(n_per=20)
    lists = data_json(h(*range(10)), h(10, 11, 12), d(0, 1, 2), unl0=h(13, 14, 15, 16), unl1=d(3, 4, 5, 6))
    split, _ = split_of(tmp_path, lists, ds, holdout_fraction=0.25)
    c = split.counts()
    assert c["holdout_healthy"]["healthy"] >= 2 and c["holdout_mixed"]["healthy"] + c["holdout_mixed"]["diseased"] >= 1
    assert c["healthy"]["healthy"] + c["holdout_healthy"]["healthy"] == 10  # carved out of train/0 only
    assert "deviation" in split.report["published"]["holdout"]


def test_names_absent_from_the_data_are_skipped_and_reported_up_to_the_limit(tmp_path):
    lists = data_json(h(0, 2, 4, 5) + ["h_999.png"], h(1, 3, 6), d(0, 1, 2))
    split, _ = split_of(tmp_path, lists, data_json_max_missing=0.2)
    miss = split.report["published"]["missing"]
    assert miss["n"] == 1 and miss["first"] == ["h_999.png"] and miss["by_key"] == {"train/0": 1}
    assert split.counts()["healthy"]["healthy"] == 4
    # beyond the limit (default 0.01: 1 of 11 names is 9 %): one error naming the file, the key and the names
    msg = error_of(tmp_path, lists)
    assert msg.startswith(f"data.json {tmp_path / 'data.json'}: key 'train/0': ")
    assert "h_999.png" in msg and "data_json_max_missing" in msg


# ---------------------------------------------------------------------------------------------- the errors
@pytest.mark.parametrize("content, key, words", [
    (data_json(h(0, 2), h(1), []), "test/1", "empty list"),
    (data_json(h(0, 2), h(1), d(0), unl0=[], unl1=d(1)), "train/unlabeled/0", "empty list"),
    (data_json(h(0, 2), h(1, 2), d(0)), "test/0", "also in key 'train/0'"),
    (data_json(h(0, 0), h(1), d(0)), "train/0", "appears twice"),
    ({"train": {"0": h(0)}}, "test", "missing"),
    ({"test": {"0": h(1), "1": d(0)}}, "train", "missing"),
    ({"train": [h(0)], "test": {"0": h(1), "1": d(0)}}, "train", "where a mapping"),
    ({"train": {"0": h(0), "unlabeled": ["x"]}, "test": {"0": h(1), "1": d(0)}}, "train/unlabeled",
     "where a mapping"),
    ({"train": {"0": "h_000.png"}, "test": {"0": h(1), "1": d(0)}}, "train/0", "where a list"),
    (data_json(h(0), h(1), [1, 2]), "test/1", "not file names"),
    ({"train": {"0": h(0), "val": h(2)}, "test": {"0": h(1), "1": d(0)}}, "train", "unknown key"),
    (data_json(h(0), h(1), d(0) + h(4)), "test/1", "labels must agree"),
])
def test_each_malformed_file_is_one_error_naming_the_file_and_the_key(tmp_path, content, key, words):
    msg = error_of(tmp_path, content)
    assert msg.startswith(f"data.json {tmp_path / 'data.json'}: key '{key}': "), msg
    assert words in msg
    if words.startswith("also in"):
        assert "'h_002.png'" in msg


@pytest.mark.parametrize("content, words", [("{not json", "not valid JSON"), ("[1, 2]", "top level is a list"),
                                             ("", "not valid JSON")])
def test_a_file_that_is_not_a_json_mapping_is_one_error(tmp_path, content, words):
    msg = error_of(tmp_path, content)
    assert msg.startswith(f"data.json {tmp_path / 'data.json'}: ") and words in msg and "Traceback" not in msg


def test_a_missing_file_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match=r"data\.json .*nowhere\.json: file not found"):
        make_split(toy_dataset(), SplitConfig(data_json=str(tmp_path / "nowhere.json")), 0)
    with pytest.raises(ConfigError, match="data_json_max_missing"):
        SplitConfig.from_dict({"data_json": "x.json", "data_json_max_missing": 2})
    with pytest.raises(ConfigError, match="not both"):
        SplitConfig.from_dict({"data_json": "x.json", "manifest": "m.csv"})
    with pytest.raises(ConfigError, match="data_json"):
        SplitConfig.from_dict({"data_json": 3})


def test_a_card_resolves_a_relative_data_json_beside_it(tmp_path):
    root = tmp_path / "sets" / "toy"
    for cls, prefix, n in (("normal", "h", 10), ("tumor", "d", 10)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            rng = np.random.default_rng(i + (100 if prefix == "d" else 0))
            Image.fromarray((rng.random((40, 40)) * 255).astype(np.uint8)).save(root / cls / f"{prefix}_{i:03d}.png")
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "split.json").write_text(json.dumps(GOOD))
    card = tmp_path / "cards" / "toy.yaml"
    card.write_text(yaml.safe_dump({"name": "toy", "format": "class_folder", "root": "../sets/toy",
                                    "classes": {"healthy": ["normal"], "diseased": ["tumor"]},
                                    "split": {"data_json": "split.json"}}))
    ds = load_dataset(str(card), image_size=32)
    split = make_split(ds, SplitConfig.from_dict(ds.meta["card"]["split"]), 0)
    assert split.report["published"]["path"] == str(tmp_path / "cards" / "split.json")
    assert split.counts()["test"] == {"healthy": 3, "diseased": 3}


# ---------------------------------------------------------------------------------------- reproduce mode
def test_a_published_split_keeps_cross_role_duplicates_and_counts_them(tmp_path):
    ds = toy_dataset(dup=True)  # h_000 = h_001 (exact), h_002 ~ h_003 (near)
    lists = data_json(h(0, 2, 4, 5), h(1, 3, 6), d(0, 1, 2), unl0=h(7, 8), unl1=d(3, 4))
    split, _ = split_of(tmp_path, lists, ds)
    cross = split.report["published_split_cross_role_duplicates"]
    assert cross["test_with_training_copy"] == {"exact": 1, "near": 1}
    assert cross["test_with_copy_by_role"]["healthy"] == {"exact": 1, "near": 1}
    assert cross["test_with_copy_by_role"]["mixed"] == {"exact": 0, "near": 0}
    assert cross["n_groups"] == 2 and all(g["roles"] == ["healthy", "test"] for g in cross["groups"])
    assert [g["exact"] for g in cross["groups"]] == [True, False]
    # the suite's own check refuses the same roles when the split is not a published one
    with pytest.raises(DataError, match="span several roles"):
        check_split(Split(split.roles, split.units, {}), ds)
    # the suite's own split of the same data never separates a duplicate group
    own = make_split(ds, SplitConfig(test_size=6), seed=0)
    assert own.roles[0] == own.roles[1] and own.roles[2] == own.roles[3]
    assert "published_split_cross_role_duplicates" not in own.report


def test_a_manifest_is_published_too_and_resumes_with_its_copies(tmp_path):
    ds = toy_dataset(dup=True)
    split, _ = split_of(tmp_path, GOOD, ds)
    path = write_manifest(split, ds, tmp_path / "m.csv")
    again = read_manifest(path, ds)  # what the runner does on resume: must not refuse the copies
    assert np.array_equal(again.roles, split.roles)
    assert again.report["published"]["source"] == "manifest"
    assert again.report["published_split_cross_role_duplicates"]["test_with_training_copy"]["exact"] == 1


# ---------------------------------------------------------------------------------------------- real data
SHARED = Path(os.environ.get("ANOMALY_BENCH_DATA_ROOT") or REPO.parent / "shared" / "data")
SPLIT_FILE = REPO.parent / "shared" / "reference" / "splits" / "BrainTumor_data.json"


def test_the_real_braintumor_split_file(monkeypatch):
    root = SHARED / "brain_tumor_mri"
    if not root.is_dir() or not SPLIT_FILE.is_file():
        pytest.skip(f"real data not found ({root}, {SPLIT_FILE}); clone beside ../shared")
    monkeypatch.setenv("ANOMALY_BENCH_IO_WORKERS", "2")
    lists = read_data_json(SPLIT_FILE)
    on_disk = {p.name: p for p in root.rglob("*.jpg")}
    absent = {k: [n for n in names if n not in on_disk] for k, names in lists.items()}
    assert sorted(sum(absent.values(), [])) == ["Tr-no_1011.jpg", "Tr-no_1012.jpg", "Tr-no_1019.jpg",
                                                 "Tr-no_1020.jpg"]
    # byte-identical copies, counted here from the files themselves
    sha = {n: hashlib.sha256(on_disk[n].read_bytes()).hexdigest() for names in lists.values() for n in names
           if n in on_disk}
    by_key = {k: {sha[n] for n in names if n in sha} for k, names in lists.items()}
    train = by_key["train/0"] | by_key["train/unlabeled/0"] | by_key["train/unlabeled/1"]
    test_names = [n for k in ("test/0", "test/1") for n in lists[k] if n in sha]
    copies_in_b = sum(sha[n] in by_key["train/0"] for n in lists["test/0"] if n in sha)
    copies_in_training = sum(sha[n] in train for n in test_names)
    assert copies_in_b == 94

    ds = load_dataset("brain_tumor_mri_medianomaly")
    split = make_split(ds, SplitConfig.from_dict(ds.meta["card"]["split"]), seed=0)
    c = split.counts()
    assert c["healthy"]["healthy"] == 1000 - len(absent["train/0"]) and c["healthy"]["diseased"] == 0
    assert sum(c["mixed"].values()) == 1000 - len(absent["train/unlabeled/0"]) - len(absent["train/unlabeled/1"])
    assert sum(c["test"].values()) == 1200 - len(absent["test/0"]) - len(absent["test/1"])
    assert c["holdout_healthy"] == c["holdout_mixed"] == {"healthy": 0, "diseased": 0}
    pub = split.report["published"]
    assert sorted(pub["missing"]["first"]) == sorted(sum(absent.values(), [])) and pub["missing"]["n"] == 4
    cross = split.report["published_split_cross_role_duplicates"]
    assert cross["test_with_copy_by_role"]["healthy"]["exact"] == copies_in_b
    assert cross["test_with_training_copy"]["exact"] == copies_in_training
    assert cross["test_with_training_copy"]["near"] > 0
    # every image of the pituitary folders, which the file does not name, is unused
    pit = [i for i, x in enumerate(ds.ids) if "/pituitary/" in x]
    assert pit and set(split.roles[pit]) == {"unused"}
