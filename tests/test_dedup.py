"""Exact and near-duplicate detection."""

from __future__ import annotations

import imagehash
import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_bench.data.dedup import find_duplicates, near_pairs, phash64, popcount64


def smooth_images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """Distinct smooth uint8 images (random low-frequency mixtures)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        f = sum(rng.normal() * np.cos(np.pi * (rng.integers(0, 6) * x + rng.integers(0, 6) * y) + rng.random() * 6)
                for _ in range(6))
        f = (f - f.min()) / (f.max() - f.min() + 1e-9)
        out.append((f * 255).astype(np.uint8))
    return np.stack(out)


def as_model(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8.astype(np.float32) / 127.5 - 1.0)[:, None]


def components(n: int, pairs: np.ndarray) -> list[frozenset]:
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(int(a))] = find(int(b))
    groups: dict[int, set] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return sorted((frozenset(g) for g in groups.values() if len(g) > 1), key=min)


def test_phash_matches_imagehash():
    ims = smooth_images(40)
    ours = phash64(ims)
    ref = [int("".join("1" if b else "0" for b in imagehash.phash(Image.fromarray(im)).hash.flatten()), 2)
           for im in ims]
    assert [int(h) for h in ours] == ref


@pytest.mark.parametrize("hamming", [0, 1, 3, 6])
def test_multi_index_search_equals_brute_force(hamming):
    rng = np.random.default_rng(hamming)
    n = 1500
    h = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    for _ in range(150):  # plant near copies at distances 0..7
        i, j = rng.integers(n, size=2)
        v = int(h[i])
        for bit in rng.choice(64, rng.integers(0, 8), replace=False):
            v ^= 1 << int(bit)
        h[j] = np.uint64(v)
    h[100:140] = h[7]  # a big bucket of identical hashes
    d = popcount64((h[:, None] ^ h[None, :]).ravel()).reshape(n, n)
    brute = np.argwhere(np.triu(d <= hamming, 1))
    ours = near_pairs(h, hamming)
    assert (popcount64(h[ours[:, 0]] ^ h[ours[:, 1]]) <= hamming).all()
    assert components(n, ours) == components(n, brute)


def test_exact_and_near_groups_and_report():
    u8 = smooth_images(30, seed=3)
    u8[5] = u8[2]  # exact copy
    u8[9] = u8[2]  # and another
    noisy = u8[12].astype(int) + np.random.default_rng(0).integers(-1, 2, u8[12].shape)
    u8[20] = np.clip(noisy, 0, 255).astype(np.uint8)  # near copy of 12 (pixels differ)
    ids = [f"img{i}" for i in range(30)]
    roles = ["train"] * 15 + ["test"] * 15
    labels = [0] * 30
    labels[9] = 1
    g_exact, rep_exact = find_duplicates(as_model(u8), ids=ids, roles=roles, labels=labels, near=False)
    assert g_exact[2] == g_exact[5] == g_exact[9] >= 0 and g_exact[12] == -1 and g_exact[20] == -1
    assert rep_exact["n_groups"] == 1 and rep_exact["n_images_in_groups"] == 3
    assert rep_exact["label_conflicts"] == 1 and rep_exact["cross_role_groups"] == 0
    g, rep = find_duplicates(as_model(u8), ids=ids, roles=roles, labels=labels, near=True, hamming=4)
    assert g[12] == g[20] >= 0 and g[12] != g[2]
    assert rep["n_groups"] == 2 and rep["n_exact_groups"] == 1
    assert rep["cross_role_groups"] == 1 and "img12 (train)" in rep["cross_role_examples"][0]
    assert (g >= 0).sum() == 5 and (g[[0, 1, 3, 4]] == -1).all()


def test_content_hashes_group_files_with_different_pixels():
    u8 = smooth_images(4, seed=5)
    g, rep = find_duplicates(u8, content_hashes=["a", "b", "a", "c"], near=False)
    assert g[0] == g[2] >= 0 and g[1] == -1 and g[3] == -1


def test_no_duplicates():
    g, rep = find_duplicates(smooth_images(10, seed=7), near=True, hamming=0)
    assert (g == -1).all() and rep["n_groups"] == 0 and rep["largest_group"] == 0


def test_group_ids_are_dense_and_ordered_by_first_member():
    u8 = smooth_images(8, seed=9)
    u8[6] = u8[1]
    u8[4] = u8[0]
    g, _ = find_duplicates(u8, near=False)
    assert g.tolist() == [0, 1, -1, -1, 0, -1, 1, -1]
