"""Dataset formats, cards, root resolution and loading. Fixtures are built in tmp_path; tests on the real data
in ../shared/data skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anomaly_bench.core.config import REPO_DIR
from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data.loading import (
    guess_card,
    list_cards,
    load_dataset,
    resolve_card,
    resolve_root,
    root_present,
)

SHARED = Path(os.environ.get("ANOMALY_BENCH_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data")


def img(seed: int, size: int = 40, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(seed)
    a = (rng.random((size, size)) * 255).astype(np.uint8)
    return Image.fromarray(a) if mode == "L" else Image.fromarray(np.stack([a] * 3, -1))


def write(path: Path, seed: int, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img(seed, **kw).save(path)
    return path


def load_guessed(root: Path, fmt: str):
    """Load a fixture tree through the card guessed from its layout (checked to be ``fmt``), at 32 px."""
    card = resolve_card(str(root))
    assert card["format"] == fmt
    return card, load_dataset(card, image_size=32)


@pytest.fixture(autouse=True)
def _no_env_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("ANOMALY_BENCH_DATA_ROOT", raising=False)
    monkeypatch.setenv("ANOMALY_BENCH_CACHE", str(tmp_path / "cache"))


def tumor_tree(root: Path) -> Path:
    """Training/Testing x notumor/glioma, with a Testing image that duplicates a Training one."""
    seed = 0
    for split in ("Training", "Testing"):
        for cls in ("notumor", "glioma"):
            for i in range(3):
                seed += 1
                write(root / split / cls / f"{split[:2]}-{cls[:2]}_{i:04d}.jpg", seed, mode="RGB")
    (root / "Testing" / "glioma" / "Te-gl_0002.jpg").write_bytes(
        (root / "Training" / "glioma" / "Tr-gl_0001.jpg").read_bytes())
    return root


TUMOR_CARD = {"name": "tumor", "format": "class_folder",
              "classes": {"healthy": ["notumor"], "diseased": ["glioma"]},
              "roles_from_dirs": {"Training": "train", "Testing": "test"}, "image_size": 32}


# ------------------------------------------------------------------------------------------- class_folder
def test_class_folder_nested_roles_labels_and_dedup(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    ds = load_dataset({**TUMOR_CARD, "root": str(root)})
    assert ds.images.shape == (12, 1, 32, 32) and ds.images[:].min() >= -1 and ds.images[:].max() <= 1
    assert ds.summary()["n_healthy"] == 6 and ds.summary()["n_diseased"] == 6
    i = ds.ids.index("Training/notumor/Tr-no_0000.jpg")
    assert ds.labels[i] == 0 and ds.roles[i] == "train" and ds.classes[i] == "notumor"
    assert ds.subjects is None  # no subject_regex: each image is its own subject
    a, b = ds.ids.index("Testing/glioma/Te-gl_0002.jpg"), ds.ids.index("Training/glioma/Tr-gl_0001.jpg")
    assert ds.dup_groups[a] == ds.dup_groups[b] >= 0
    rep = ds.meta["duplicates"]
    assert rep["n_exact_groups"] == 1 and rep["cross_role_groups"] == 1
    assert ds.meta["card"]["name"] == "tumor" and ds.meta["skipped_images"] == []
    assert "file_sha256" not in ds.meta


def test_class_folder_subject_regex(tmp_path):
    root = tmp_path / "cxr"
    names = {"NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "NORMAL2-IM-0001-0001.jpeg"],
             "PNEUMONIA": ["person12_bacteria_3.jpeg", "person12_virus_4.jpeg", "odd.jpeg"]}
    for k, (cls, files) in enumerate(names.items()):
        for j, f in enumerate(files):
            write(root / "train" / cls / f, 10 * k + j)
    card = {"name": "cxr", "format": "class_folder", "root": str(root), "image_size": 32,
            "classes": {"healthy": ["NORMAL"], "diseased": ["PNEUMONIA"]},
            "subject_regex": [r"^(person\d+)_", r"^(NORMAL2-IM-\d+)-", r"^(IM-\d+)-"]}
    ds = load_dataset(card)
    subj = dict(zip(ds.ids, ds.subjects))
    assert subj["train/NORMAL/IM-0001-0001.jpeg"] == subj["train/NORMAL/IM-0001-0002.jpeg"] == "IM-0001"
    assert subj["train/NORMAL/NORMAL2-IM-0001-0001.jpeg"] == "NORMAL2-IM-0001"
    assert subj["train/PNEUMONIA/person12_virus_4.jpeg"] == "person12"
    assert subj["train/PNEUMONIA/odd.jpeg"] == "train/PNEUMONIA/odd.jpeg"  # unmatched: its own subject
    assert ds.meta["subject_regex_unmatched"]["n"] == 1
    with pytest.raises(ConfigError, match="subject_regex"):
        load_dataset({**card, "subject_regex": "person(\\d+"})


def test_unknown_class_folder_is_an_error_naming_it(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    write(root / "Training" / "other" / "x.jpg", 99)
    with pytest.raises(DataError) as ei:
        load_dataset({**TUMOR_CARD, "root": str(root)})
    msg = str(ei.value)
    assert "Training/other" in msg and "ignore_unknown_classes" in msg
    ds = load_dataset({**TUMOR_CARD, "root": str(root), "ignore_unknown_classes": True})
    assert len(ds) == 12


def test_empty_class_folder_and_missing_class(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    (root / "Testing" / "glioma2").mkdir()
    card = {**TUMOR_CARD, "root": str(root), "classes": {"healthy": ["notumor"], "diseased": ["glioma", "glioma2"]}}
    with pytest.raises(DataError, match="glioma2.*no image files"):
        load_dataset(card)
    (root / "Testing" / "glioma2").rmdir()
    with pytest.raises(DataError, match="glioma2"):
        load_dataset(card)


def test_corrupt_image_error_and_skip(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    bad = root / "Training" / "notumor" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError) as ei:
        load_dataset({**TUMOR_CARD, "root": str(root)})
    assert str(bad) in str(ei.value) and "on_bad_image" in str(ei.value)
    ds = load_dataset({**TUMOR_CARD, "root": str(root)}, on_bad_image="skip")
    assert len(ds) == 12 and ds.meta["skipped_images"][0][0] == str(bad)
    assert "Training/notumor/broken.jpg" not in ds.ids


def test_limit_per_class_spans_both_split_folders(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    ds = load_dataset({**TUMOR_CARD, "root": str(root)}, limit_per_class=2)
    assert len(ds) == 4 and set(ds.roles) == {"train", "test"}


def test_symlink_cycle_does_not_loop(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    try:
        os.symlink(root, root / "Training" / "notumor" / "loop")
    except OSError:
        pytest.skip("symbolic links not available")
    assert len(load_dataset({**TUMOR_CARD, "root": str(root)})) == 12


def test_guessed_class_folder_prints_mapping(tmp_path, capsys):
    root = tumor_tree(tmp_path / "tumor")
    card = resolve_card(str(root))
    assert card["format"] == "class_folder"
    assert card["classes"] == {"healthy": ["notumor"], "diseased": ["glioma"]}
    assert "healthy = ['notumor']" in capsys.readouterr().err
    write(tmp_path / "flat" / "cats" / "a.png", 1)
    write(tmp_path / "flat" / "dogs" / "a.png", 2)
    with pytest.raises(DataError, match="cannot guess"):
        guess_card(tmp_path / "flat")


# ---------------------------------------------------------------------------------------------------- npz
def make_npz(path: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = (rng.random((n, 28, 28)) * 255).astype(np.uint8)
        arrays[f"{s}_labels"] = np.array([[0], [1], [0], [2], [0], [1]][:n], dtype=np.uint8)
    arrays["test_images"][3] = arrays["train_images"][0]  # a leak across the official split
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_npz_labels_roles_ids_and_upsampling(tmp_path):
    p = make_npz(tmp_path / "mnist" / "pneumo.npz")
    ds = load_dataset(str(p), image_size=32)
    assert ds.images.shape == (18, 1, 32, 32)
    assert ds.labels.tolist()[:6] == [0, 1, 0, 1, 0, 1]  # label 2 -> diseased
    assert ds.ids[0] == "train/000000" and ds.ids[-1] == "test/000005"
    assert ds.roles.tolist() == ["train"] * 12 + ["test"] * 6 and ds.classes[3] == "2"
    assert ds.meta["duplicates"]["cross_role_groups"] == 1
    card = {"name": "m", "format": "npz", "root": str(p.parent), "roles_from_splits": False, "splits": ["test"]}
    ds2 = load_dataset(card, image_size=32)
    assert len(ds2) == 6 and ds2.roles is None


def test_npz_errors(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, train_images=np.zeros((3, 28, 28), np.uint8), train_labels=np.zeros(2))
    with pytest.raises(DataError, match="3 images but"):
        load_dataset(str(p), image_size=32)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DataError, match="bad.npz"):
        load_dataset(str(tmp_path / "bad.npz"), image_size=32)


# ---------------------------------------------------------------------------------------------- brainomaly
def test_brainomaly_layout(tmp_path):
    root = tmp_path / "bm"
    seed = 0
    for folder, subjects in (("train/pos", ["p1", "p2"]), ("train/neg_mixed", ["h1"]), ("train/neg", ["h2", "h3"]),
                             ("test/pos", ["p9"]), ("test/neg", ["h9"])):
        for s in subjects:
            for k in range(2):
                seed += 1
                write(root / folder / f"{s}__{k:03d}.png", seed)
    _, ds = load_guessed(root, "brainomaly")
    role = dict(zip(ds.ids, ds.roles))
    label = dict(zip(ds.ids, ds.labels))
    assert role["train/pos/p1__000.png"] == "mixed" and label["train/pos/p1__000.png"] == 1
    assert role["train/neg_mixed/h1__001.png"] == "mixed" and label["train/neg_mixed/h1__001.png"] == 0
    assert role["train/neg/h2__000.png"] == "healthy" and role["test/pos/p9__000.png"] == "test"
    assert ds.subjects[ds.ids.index("train/pos/p2__001.png")] == "p2" and len(set(ds.subjects)) == 7
    assert ds.meta["preprocessing"]["pad"] == 5  # the authors' default
    assert ds.meta["subjects_in_several_roles"]["n"] == 0
    (root / "train" / "neg").rename(root / "train" / "negative")
    with pytest.raises(DataError, match="train/neg"):
        load_dataset(str(root), image_size=32)


# -------------------------------------------------------------------------------------------------- covidx
def covidx_tree(root: Path) -> Path:
    rows = {"train": ["1 a.png COVID-19 cohen", "2 b.png normal rsna", "3 c.png pneumonia rsna",
                      "3 d.png normal rsna", "4 e.png positive sirm"],
            "test": ["8 t1.png COVID-19 cohen", "9 t2.png normal rsna", "9 t3.png negative rsna"]}
    seed = 0
    for split, lines in rows.items():
        for ln in lines:
            seed += 1
            write(root / split / ln.split()[1], seed, size=50)
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_covidx_classes_roles_subjects_and_preprocessing(tmp_path):
    root = covidx_tree(tmp_path / "covidx")
    card, ds = load_guessed(root, "covidx")
    assert "train/c.png" not in ds.ids  # pneumonia excluded by default
    lab = dict(zip(ds.ids, ds.labels.tolist()))
    assert lab == {"train/a.png": 1, "train/b.png": 0, "train/d.png": 0, "train/e.png": 1, "test/t1.png": 1,
                   "test/t2.png": 0, "test/t3.png": 0}
    assert dict(zip(ds.ids, ds.subjects))["test/t3.png"] == "9"
    assert set(ds.roles) == {"train", "test"}
    assert ds.meta["preprocessing"]["crop_top"] == 0.08
    ds2 = load_dataset({**card, "pneumonia": "diseased"}, image_size=32)
    assert dict(zip(ds2.ids, ds2.labels.tolist()))["train/c.png"] == 1


def test_covidx_three_column_rows_and_bad_rows(tmp_path):
    root = covidx_tree(tmp_path / "covidx")
    (root / "test.txt").write_text("8 t1.png COVID-19\n9 t2.png normal\n")
    assert len(load_dataset(str(root), image_size=32)) == 6
    (root / "test.txt").write_text("8 t1.png COVID-19\n9 t2.png tuberculosis x\n")
    with pytest.raises(DataError, match=r"test.txt, line 2: unknown class 'tuberculosis'"):
        load_dataset(str(root), image_size=32)


def test_covidx_split_file_naming_absent_image(tmp_path):
    root = covidx_tree(tmp_path / "covidx")
    with open(root / "train.txt", "a") as fh:
        fh.write("7 ghost.png normal rsna\n")
    with pytest.raises(DataError) as ei:
        load_dataset(str(root), image_size=32)
    msg = str(ei.value)
    assert "train.txt, line 6" in msg and "ghost.png" in msg
    ds = load_dataset(str(root), image_size=32, on_bad_image="skip")
    assert any("ghost.png" in p for p, _ in ds.meta["skipped_images"]) and len(ds) == 7


# --------------------------------------------------------------------------------------------- chestxray14
def chestxray14_tree(root: Path) -> Path:
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n")
    rows = [("00000001_000.png", "No Finding", "1", "PA"), ("00000001_001.png", "Cardiomegaly|Effusion", "1", "PA"),
            ("00000002_000.png", "No Finding", "2", "AP"), ("00000003_000.png", "Mass", "3", "PA"),
            ("00000004_000.png", "No Finding", "4", "PA")]
    root.mkdir(parents=True)
    (root / "Data_Entry_2017_v2020.csv").write_text(
        header + "".join(f"{n},{f},0,{p},50,M,{v},1024,1024,0.14,0.14\n" for n, f, p, v in rows))
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n00000004_000.png\n")
    for k, (n, *_rest) in enumerate(rows):
        write(root / f"images_00{k % 2 + 1}" / "images" / n, k, size=64)
    return root


def test_chestxray14_pa_only_labels_roles_subjects(tmp_path):
    root = chestxray14_tree(tmp_path / "cxr14")
    _, ds = load_guessed(root, "chestxray14")
    assert ds.ids == ["00000001_000.png", "00000001_001.png", "00000003_000.png", "00000004_000.png"]  # no AP
    assert ds.labels.tolist() == [0, 1, 1, 0]
    assert ds.roles.tolist() == ["train", "train", "test", "test"]
    assert ds.subjects == ["1", "1", "3", "4"]


def test_chestxray14_missing_image(tmp_path):
    root = chestxray14_tree(tmp_path / "cxr14")
    next(root.rglob("00000003_000.png")).unlink()
    with pytest.raises(DataError) as ei:
        load_dataset(str(root), image_size=32)
    assert "Data_Entry_2017_v2020.csv, line 5" in str(ei.value) and "00000003_000.png" in str(ei.value)
    card = {**resolve_card(str(root)), "allow_missing_images": True}
    assert len(load_dataset(card, image_size=32)) == 3


# ------------------------------------------------------------------------------------------ brain_subjects
def test_brain_subjects_nifti_volumes(tmp_path):
    nib = pytest.importorskip("nibabel")
    root = tmp_path / "migraine"
    rng = np.random.default_rng(0)
    for cls, subjects in (("healthy", ["s01", "s02"]), ("migraine", ["s03"])):
        (root / cls).mkdir(parents=True)
        for s in subjects:
            vol = rng.random((24, 20, 10)).astype(np.float32) * 1000
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / cls / f"{s}.nii.gz"))
    card = {"name": "mig", "format": "brain_subjects", "root": str(root), "image_size": 32,
            "classes": {"healthy": ["healthy"], "diseased": ["migraine"]}, "slice_range": [0.2, 0.8],
            "clip_percentiles": [1.0, 99.0], "dedup": False}
    ds = load_dataset(card)
    assert len(ds) == 3 * 6  # slices 2..7 of 10
    assert ds.subjects.count("s03") == 6 and ds.labels[ds.subjects.index("s03")] == 1
    assert ds.ids[0] == "healthy/s01.nii.gz#002" and ds.images[:].min() == -1.0 and ds.images[:].max() > 0.9
    ds_idx = load_dataset({**card, "slice_range": [4, 6]})
    assert len(ds_idx) == 6 and {i.split("#")[1] for i in ds_idx.ids} == {"004", "005"}
    (root / "labels.csv").write_text("subject,label\ns01,healthy\ns02,1\ns03,migraine\n")
    ds_csv = load_dataset({**card, "labels_csv": "labels.csv"})
    assert dict(zip(ds_csv.subjects, ds_csv.labels.tolist()))["s02"] == 1
    (root / "labels.csv").unlink()
    guessed = resolve_card(str(root))
    assert guessed["format"] == "brain_subjects" and guessed["classes"]["diseased"] == ["migraine"]
    (root / "healthy" / "s02.nii.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(DataError, match="s02.nii.gz"):
        load_dataset(card)
    assert len(load_dataset({**card, "on_bad_image": "skip"})) == 12


def test_brain_subjects_png_slices(tmp_path):
    root = tmp_path / "slices"
    for cls, subjects in (("healthy", ["a", "b"]), ("migraine", ["c"])):
        for s in subjects:
            for k in range(10):
                write(root / cls / f"{s}__{k}.png", hash((s, k)) % 1000)
    card = {"name": "sl", "format": "brain_subjects", "root": str(root), "image_size": 32,
            "classes": {"healthy": ["healthy"], "diseased": ["migraine"]}, "slice_range": [0.5, 1.0]}
    ds = load_dataset(card)
    assert len(ds) == 15 and sorted(set(ds.subjects)) == ["a", "b", "c"]
    assert all(int(i.rsplit("__", 1)[1].split(".")[0]) >= 5 for i in ds.ids)
    write(root / "healthy" / "d_no_separator.png", 5)
    with pytest.raises(DataError, match="d_no_separator.png"):
        load_dataset(card)


# -------------------------------------------------------------------------------- cards, roots, validation
def test_card_validation_names_key_path_and_allowed_keys(tmp_path):
    base = {**TUMOR_CARD, "root": str(tmp_path)}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\].*allowed"):
        resolve_card({**base, "colour": 1})
    with pytest.raises(ConfigError, match=r"split: unknown key\(s\) \['tst_size'\]"):
        resolve_card({**base, "split": {"tst_size": 3}})
    with pytest.raises(ConfigError, match=r"preprocessing: unknown key"):
        resolve_card({**base, "preprocessing": {"crop": 1}})
    with pytest.raises(ConfigError, match="power of two"):
        resolve_card({**base, "image_size": 28})
    with pytest.raises(ConfigError, match="dedup"):
        resolve_card({**base, "dedup": "yes"})
    with pytest.raises(ConfigError, match="both healthy and diseased"):
        resolve_card({**base, "classes": {"healthy": ["a"], "diseased": ["A"]}})
    with pytest.raises(ConfigError, match="unknown dataset format"):
        resolve_card({**base, "format": "nope"})
    with pytest.raises(ConfigError, match="not a card name"):
        resolve_card("no_such_card_anywhere")
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text(yaml.safe_dump({**base, "typo_key": 1}))
    with pytest.raises(ConfigError, match=str(bad_yaml)):
        resolve_card(str(bad_yaml))


def test_all_shipped_cards_are_valid():
    names = {c["name"]: c for c in list_cards()}
    for n in ("brain_tumor_mri", "chest_xray_pneumonia", "pneumoniamnist", "covidx", "chestxray14",
              "migraine_brain_mri", "brainomaly_folder"):
        assert n in names and "error" not in names[n], names.get(n)
        card = resolve_card(n)
        assert card["format"] and card["download"] and card["root"].startswith("../shared/data/")
    assert resolve_card("covidx")["split"]["mixed_diseased"] == 1570


def test_root_resolution_and_missing_data_message(tmp_path, monkeypatch):
    card = resolve_card("covidx")
    assert resolve_root(card) == Path(os.path.normpath(REPO_DIR / "../shared/data/covidx"))
    assert resolve_root(card, tmp_path) == tmp_path / "covidx"
    monkeypatch.setenv("ANOMALY_BENCH_DATA_ROOT", str(tmp_path / "env"))
    assert resolve_root(card) == tmp_path / "env" / "covidx"
    assert not root_present(card)
    with pytest.raises(DataError) as ei:
        load_dataset("covidx")
    msg = str(ei.value)
    assert str(tmp_path / "env" / "covidx") in msg and "COVID-Net" in msg and "--data-root" in msg
    with pytest.raises(DataError, match="Not publicly available"):
        load_dataset("migraine_brain_mri", data_root=tmp_path)
    covidx_tree(tmp_path / "covidx")
    assert len(load_dataset("covidx", data_root=tmp_path, image_size=32)) == 7


def test_card_yaml_file_with_relative_root(tmp_path):
    tumor_tree(tmp_path / "sets" / "tumor")
    card_path = tmp_path / "cards" / "tumor.yaml"
    card_path.parent.mkdir()
    card_path.write_text(yaml.safe_dump({**TUMOR_CARD, "root": "../sets/tumor"}))
    ds = load_dataset(str(card_path))
    assert len(ds) == 12 and ds.meta["card_source"] == str(card_path)


def test_cached_second_load_is_identical(tmp_path):
    root = tumor_tree(tmp_path / "tumor")
    a = load_dataset({**TUMOR_CARD, "root": str(root)})
    b = load_dataset({**TUMOR_CARD, "root": str(root)})
    c = load_dataset({**TUMOR_CARD, "root": str(root)}, cache=False)
    assert a.fingerprint() == b.fingerprint() == c.fingerprint()
    assert np.array_equal(a.dup_groups, b.dup_groups) and a.meta["duplicates"] == b.meta["duplicates"]


# ---------------------------------------------------------------------------------------------- real data
def need(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"real data {name} not found at {p} (set ANOMALY_BENCH_DATA_ROOT to the folder holding it)")
    return p


@pytest.mark.realdata
def test_real_brain_tumor_mri_duplicates():
    need("brain_tumor_mri")
    ds = load_dataset("brain_tumor_mri", data_root=SHARED, image_size=64)
    assert len(ds) > 7000 and ds.summary()["n_healthy"] > 1900
    rep = ds.meta["duplicates"]
    assert 280 <= rep["n_exact_groups"] <= 320  # the README's ~300 groups of byte-identical copies
    assert rep["n_groups"] >= rep["n_exact_groups"] and rep["label_conflicts"] == 0
    assert rep["cross_role_groups"] > 100  # Testing images with copies in Training
    assert any("Testing/" in " ".join(g) and "Training/" in " ".join(g) for g in rep["cross_role_examples"])


@pytest.mark.realdata
def test_real_chest_xray_patient_ids():
    need("chest_xray_pneumonia")
    ds = load_dataset("chest_xray_pneumonia", data_root=SHARED, image_size=64)
    assert len(ds) > 5800
    assert ds.meta["subject_regex_unmatched"]["n"] <= 0.01 * len(ds)
    assert 2500 < len(set(ds.subjects)) < len(ds)
    assert 20 <= ds.meta["duplicates"]["n_exact_groups"] <= 40  # the README's ~30 groups


@pytest.mark.realdata
def test_real_pneumoniamnist():
    need("pneumoniamnist")
    ds = load_dataset("pneumoniamnist", data_root=SHARED)
    assert ds.images.shape == (3166, 1, 32, 32)
    assert int((ds.roles == "test").sum()) == 468 and ds.summary()["n_healthy"] == 1583
