"""The thumbnail-correlation duplicate link: re-encoded / re-windowed / sharpened / shifted copies join their
original, distinct images do not, blockwise search equals brute force, card validation, the pair report, and on
the real brain_tumor_mri set no test image of the suite split keeps a near-copy among the training roles."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.data.dedup import correlated_pairs, find_duplicates, thumbnails
from anomaly_bench.data.loading import dedup_settings, resolve_card

TRAIN_ROLES = ["healthy", "mixed", "holdout_healthy", "holdout_mixed"]
SHARED = Path(os.environ.get("ANOMALY_BENCH_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data")


def phantoms(n: int, size: int = 128, seed: int = 0) -> np.ndarray:
    """Distinct phantom-like uint8 images: a soft-edged 'head' of random position and shape filled with a
    smooth random texture and a few Gaussian blobs, on a black background."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(-0.15, 0.15, 2)
        ax, ay = rng.uniform(0.55, 0.85, 2)
        head = 1 / (1 + np.exp((np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) - 1) * 25))
        f = sum(rng.normal() * np.cos(np.pi * (rng.integers(1, 5) * x + rng.integers(1, 5) * y) + rng.random() * 6)
                for _ in range(6))
        img = head * (0.5 + 0.04 * f)
        for _ in range(3):
            ex, ey = rng.uniform(-0.4, 0.4, 2)
            r = rng.uniform(0.08, 0.25)
            img = img + head * rng.uniform(-0.4, 0.4) * np.exp(-((x - ex) ** 2 + (y - ey) ** 2) / (2 * r * r))
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


def jpeg(u: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(u).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def gamma(u: np.ndarray, g: float) -> np.ndarray:
    return (255 * (u / 255.0) ** g).round().astype(np.uint8)


def sharpen(u: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(u).filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=0)))


VARIANTS = {"jpeg30": lambda u: jpeg(u, 30), "jpeg50": lambda u: jpeg(u, 50), "jpeg70": lambda u: jpeg(u, 70),
            "gamma0.8": lambda u: gamma(u, 0.8), "gamma1.25": lambda u: gamma(u, 1.25), "unsharp": sharpen,
            "shift1px": lambda u: np.roll(u, 1, axis=1)}


def as_model(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 127.5 - 1.0)[:, None]


# ---------------------------------------------------------------------------------------------- thumbnails
def test_thumbnails_are_standardised_and_scale_free():
    u8 = phantoms(5, size=64)
    t = thumbnails(u8)
    assert t.shape == (5, 32 * 32) and t.dtype == np.float32
    assert np.allclose(t.mean(1), 0, atol=1e-6) and np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    assert np.allclose(thumbnails(as_model(u8)), t, atol=1e-5)  # [-1, 1] floats and uint8 agree
    # area down-sampling: a 64 px image that is constant on 2x2 blocks has the 32 px image as thumbnail
    small = phantoms(1, size=32)
    assert np.allclose(thumbnails(np.kron(small, np.ones((2, 2), np.uint8))), thumbnails(small), atol=1e-6)


def test_constant_images_are_zero_rows_and_linked_only_by_the_exact_link():
    u8 = phantoms(4, size=64)
    u8[1] = 0
    u8[2] = 0
    u8[3] = 200
    t = thumbnails(u8)
    assert not t[1:].any() and np.isfinite(t).all()
    assert len(correlated_pairs(t, 0.5)[0]) == 0
    g, rep = find_duplicates(u8, near=False, corr=0.99)
    assert g[1] == g[2] >= 0 and g[3] == -1 and g[0] == -1
    assert rep["pairs"][0]["link"] == "exact" and rep["n_corr_links"] == 0


# ---------------------------------------------------------------------------------------------- grouping
def test_reencoded_copies_join_their_original_distinct_images_do_not():
    base = phantoms(12)
    variants = [np.stack([f(u) for u in base]) for f in VARIANTS.values()]
    images = np.concatenate([base, *variants])  # image k of copy set v is at (v + 1) * 12 + k
    origin = np.tile(np.arange(12), 1 + len(VARIANTS))
    g, rep = find_duplicates(as_model(images), near=True, hamming=0, corr=0.99)
    assert (g >= 0).all()
    for k in range(12):
        assert len(set(g[origin == k])) == 1, f"copies of image {k} split over groups {set(g[origin == k])}"
    assert len(set(g)) == 12 and rep["n_groups"] == 12 and rep["largest_group"] == 1 + len(VARIANTS)
    assert rep["n_corr_links"] > 0
    # pHash alone (identical hashes) misses some of them: the correlation link is what groups them
    g_phash, rep_phash = find_duplicates(as_model(images), near=True, hamming=0, corr=None)
    assert rep_phash["n_groups"] > 12 or (g_phash == -1).any()
    assert rep_phash["corr"] is None and "n_corr_links" not in rep_phash


def test_pixel_identical_copies_are_exact_links():
    u8 = phantoms(6, size=64)
    u8[4] = u8[1]
    ids = [f"im{i}" for i in range(6)]
    g, rep = find_duplicates(u8, ids=ids, roles=["train"] * 3 + ["test"] * 3, labels=[0] * 6, corr=0.99)
    assert g[1] == g[4] >= 0 and (np.delete(g, [1, 4]) == -1).all()
    assert rep["n_exact_groups"] == 1 and rep["n_exact_links"] == 1
    assert rep["pairs"] == [{"ids": ["im1", "im4"], "link": "exact", "corr": 1.0, "phash_distance": 0,
                             "roles": ["train", "test"], "labels": [0, 0]}]


def test_chains_merge_into_one_group():
    """a~b and b~c above the threshold but a, c below it: one group of three (connected components)."""
    rng = np.random.default_rng(4)
    side = 32
    b0, q = rng.normal(size=(2, side * side))
    b0 = (b0 - b0.mean()) / np.linalg.norm(b0 - b0.mean())
    q = q - q.mean() - (q @ b0) * b0  # zero-mean and orthogonal to b0
    q /= np.linalg.norm(q)
    theta = np.arccos(0.996)  # neighbours correlate 0.996, the ends cos(2 theta) = 0.984
    chain = [np.cos(k * theta) * b0 + np.sin(k * theta) * q for k in range(3)]
    other = rng.normal(size=side * side)
    ims = np.stack([(v - v.min()) / (v.max() - v.min()) * 1.6 - 0.8 for v in [*chain, other]]).reshape(-1, side, side)
    ims = torch.from_numpy(np.kron(ims, np.ones((2, 2))).astype(np.float32))[:, None]  # 64 px
    t = thumbnails(ims)
    c = t @ t.T
    assert c[0, 1] > 0.995 and c[1, 2] > 0.995 and c[0, 2] < 0.985
    g, rep = find_duplicates(ims, near=False, corr=0.99)
    assert g[0] == g[1] == g[2] >= 0 and g[3] == -1 and rep["largest_group"] == 3


@pytest.mark.parametrize("block", [64, 100, 1000])
def test_blockwise_search_equals_brute_force(block):
    rng = np.random.default_rng(block)
    n, d = 700, 256
    x = rng.normal(size=(n, d))
    for _ in range(120):  # planted near copies with a spread of correlations
        i, j = rng.integers(n, size=2)
        x[j] = x[i] + rng.uniform(0.05, 0.8) * rng.normal(size=d)
    x[50:60] = x[5] + 0.1 * rng.normal(size=(10, d))  # a cluster
    t = thumbnails(torch.from_numpy(x.reshape(n, 1, 16, 16)).float(), side=16)
    thr = 0.8
    full = t.astype(np.float64) @ t.T.astype(np.float64)
    iu = np.triu_indices(n, 1)
    near_thr = np.abs(full[iu] - thr) < 1e-5  # float32 vs float64 may disagree exactly at the threshold
    brute = {(int(a), int(b)) for a, b, ok, amb in zip(*iu, full[iu] >= thr, near_thr) if ok and not amb}
    pairs, corr = correlated_pairs(t, thr, block=block)
    ours = {(int(a), int(b)) for a, b in pairs}
    ambiguous = {(int(a), int(b)) for a, b in zip(iu[0][near_thr], iu[1][near_thr])}
    assert ours - ambiguous == brute and len(brute) > 150
    assert (pairs[:, 0] < pairs[:, 1]).all() and np.allclose(corr, full[pairs[:, 0], pairs[:, 1]], atol=1e-5)
    assert np.array_equal(pairs, pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))])


def test_correlated_pairs_rejects_bad_thresholds():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        correlated_pairs(np.zeros((3, 4), np.float32), 0.0)


# ---------------------------------------------------------------------------------------------- report
def test_report_pairs_cross_role_first_then_most_similar_and_json():
    base = phantoms(6)
    images = np.concatenate([base, jpeg_all(base, 40), gamma_all(base, 1.25)])
    ids = [f"im{i}" for i in range(len(images))]
    roles = ["train"] * 6 + ["test"] * 6 + ["train"] * 6
    g, rep = find_duplicates(images, ids=ids, roles=roles, labels=[0] * len(images), corr=0.99, max_pairs=7)
    json.dumps(rep)
    pairs = rep["pairs"]
    assert len(pairs) == 7 and rep["n_cross_role_links"] >= 6
    cross = [p["roles"][0] != p["roles"][1] for p in pairs]
    assert cross == sorted(cross, reverse=True)
    head = [p["corr"] for p in pairs if p["roles"][0] != p["roles"][1]]
    assert head == sorted(head, reverse=True) and all(c >= 0.99 for c in head)
    assert {p["link"] for p in pairs} <= {"exact", "phash", "corr"}
    assert rep["weakest_pairs"][0]["corr"] == min(p["corr"] for p in rep["weakest_pairs"])
    assert rep["n_exact_links"] + rep["n_phash_links"] + rep["n_corr_links"] >= 12


def jpeg_all(u8: np.ndarray, q: int) -> np.ndarray:
    return np.stack([jpeg(u, q) for u in u8])


def gamma_all(u8: np.ndarray, g: float) -> np.ndarray:
    return np.stack([gamma(u, g) for u in u8])


# ---------------------------------------------------------------------------------------------- settings
CARD = {"name": "toy", "format": "npz", "root": "/nowhere", "file": "x.npz"}


def test_dedup_corr_setting_default_off_and_validation():
    assert dedup_settings(CARD)["corr"] == 0.99
    assert dedup_settings({**CARD, "dedup": {"corr": None}})["corr"] is None
    assert dedup_settings({**CARD, "dedup": {"near": False}})["corr"] is None  # exact only, as before
    assert dedup_settings({**CARD, "dedup": {"near": False, "corr": 0.995}})["corr"] == 0.995
    assert dedup_settings({**CARD, "dedup": {"corr": 1}})["corr"] == 1
    for bad in [0, 1.5, -0.2, "high", True]:
        with pytest.raises(ConfigError, match=r"card toy: dedup\.corr must be a number in \(0, 1\].*"
                                              r"corr: 0\.99.*null"):
            resolve_card({**CARD, "dedup": {"near": True, "corr": bad}})


# ---------------------------------------------------------------------------------------------- real data
def need(name: str) -> Path:
    if not (SHARED / name).exists():
        pytest.skip(f"real data {name} not found at {SHARED / name} (set ANOMALY_BENCH_DATA_ROOT to the folder "
                    f"holding it)")
    return SHARED


@pytest.fixture(scope="module")
def brain():
    from anomaly_bench.data.loading import load_dataset

    return load_dataset("brain_tumor_mri", data_root=need("brain_tumor_mri"))


@pytest.mark.realdata
def test_real_brain_no_test_image_has_a_near_copy_in_training(brain):
    from anomaly_bench.core.experiment import DatasetSpec, Experiment
    from anomaly_bench.data.split import make_split
    from anomaly_bench.harness.jobs import split_config_for

    rep = brain.meta["duplicates"]
    assert rep["corr"] == 0.99 and rep["label_conflicts"] == 0 and rep["largest_group"] < 50
    assert rep["n_groups"] > 500 and rep["n_images_in_groups"] > rep["n_exact_groups"] * 2
    t = torch.from_numpy(thumbnails(brain.images))
    cfg = split_config_for(brain, DatasetSpec(card="brain_tumor_mri"), Experiment())
    for seed in (0, 1, 2):
        split = make_split(brain, cfg, seed)
        test = split.indices("test")
        train = np.flatnonzero(np.isin(split.roles.astype(str), TRAIN_ROLES))
        best = (t[test] @ t[train].T).max(dim=1).values.numpy()
        worst = int(np.argmax(best))
        assert best.max() < 0.99, (f"seed {seed}: {int((best >= 0.99).sum())} test images have a training-role "
                                   f"image correlated >= 0.99, e.g. {brain.ids[test[worst]]} ({best.max():.4f})")


@pytest.mark.realdata
def test_real_pneumoniamnist_groups_unchanged_by_the_correlation_link():
    """PneumoniaMNIST uses its published split, so new links would move units to test and change the
    regression reference: its card enables the link only because it adds no group."""
    from anomaly_bench.data.loading import load_dataset

    ds = load_dataset("pneumoniamnist", data_root=need("pneumoniamnist"))
    assert ds.meta["duplicates"]["corr"] == 0.99
    g_off, _ = find_duplicates(ds.images, ids=ds.ids, near=True, hamming=0, corr=None)
    assert np.array_equal(ds.dup_groups, g_off)
