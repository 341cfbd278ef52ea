"""Exact and near-duplicate image detection: ``dup_groups`` for leakage-free splits plus a report.

* Exact duplicates: equal sha256 of the file bytes (when the loader knows them) or of the decoded pixels.
* Near duplicates: 64-bit perceptual hashes (pHash, the ``imagehash.phash`` algorithm: 32x32 Lanczos
  thumbnail, 2-D DCT-II, top-left 8x8 block > its median) within ``hamming`` bits. Candidate pairs come
  from multi-index hashing: with the hash cut into ``hamming + 1`` chunks, two hashes within ``hamming``
  bits agree exactly on at least one chunk (pigeonhole), so only images sharing a chunk value are compared;
  no O(N^2) loop over all pairs. Identical hashes are collapsed first.
* Re-encoded / re-windowed copies: Pearson correlation of 32x32 area-down-sampled thumbnails >= ``corr``
  (:func:`thumbnails`, :func:`correlated_pairs`: a blockwise Gram matrix, memory O(block^2)). This catches the
  same slice saved again as JPEG, with another window/gamma or sharpened, whose pHash differs by 2-4 bits.
* Groups are the connected components of the "duplicate of" graph over all links (so chains merge); every
  image in a group of two or more gets the group's id, unique images get -1.

Defaults ``hamming = 0`` and ``corr = 0.99``, measured on the real sets (64 px; 32 px for PneumoniaMNIST;
exact + identical pHash + correlation >= corr; groups / largest group / images in groups / groups mixing
healthy and diseased)::

    corr      brain_tumor_mri (7019)     chest_xray_pneumonia (5840)   pneumoniamnist (3166)
    off       610 / 17 / 1704 / 0        30 / 3 / 62 / 0               7 / 3 / 15 / 0
    0.90      919 / 1467 / 6188 / 1      46 / 4264 / 4395 / 5          60 / 1495 / 1661 / 8
    0.95      1025 / 72 / 4481 / 0       96 / 595 / 829 / 6            26 / 3 / 54 / 1
    0.97      747 / 46 / 3052 / 0        46 / 3 / 98 / 0               7 / 3 / 15 / 0
    0.98      592 / 42 / 2360 / 0        30 / 3 / 62 / 0               7 / 3 / 15 / 0
    0.99      572 / 23 / 2050 / 0        30 / 3 / 62 / 0               7 / 3 / 15 / 0
    0.995     596 / 21 / 1969 / 0        30 / 3 / 62 / 0               7 / 3 / 15 / 0

Below 0.97 chaining builds giant components of different patients' chest X-rays (and brain slices) with
label conflicts; from 0.98 up (PneumoniaMNIST: 0.97) the chest groups equal the exact + pHash groups (their
few correlated pairs are already linked), so the link leaves those splits unchanged. On brain_tumor_mri the
suite split (seeds 0-2) without the link left 124-185 test images with a training-role image correlated
>= 0.999 (279-299 at >= 0.99); with corr 0.99 none at either level (64-85 at >= 0.99 with 0.995). The largest
group at 0.99 (23 images) is one axial slice re-windowed and sharpened. pHash at 2-4 bits already collides
pairs of different patients' chest X-rays and at 4 bits mixes healthy and diseased, so the pHash radius stays
0 and the correlation link does the rest.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from anomaly_bench.core.image_array import ImageArray

#: Default Hamming radius for near duplicates (of 64 bits); 0 = identical pHash only. pHash sets exactly 32 of
#: its 64 bits (median split), so distances are even and an odd radius acts like the even one below.
DEFAULT_HAMMING = 0
#: Default correlation threshold of the thumbnail link (None = off).
DEFAULT_CORR: float | None = 0.99
#: Side of the thumbnails the correlation link compares.
THUMB_SIDE = 32


def to_uint8(images: np.ndarray | torch.Tensor | ImageArray, chunk: int = 2048) -> np.ndarray:
    """``(N, 1, H, W)`` or ``(N, H, W)`` images in ``[-1, 1]`` -> uint8 ``(N, H, W)``. An :class:`ImageArray`
    stored as uint8 gives its stored values (no copy: ``round((u / 127.5 - 1 + 1) * 127.5) == u`` for every
    code); other arrays are converted ``chunk`` images at a time."""
    if isinstance(images, ImageArray):
        if images.storage_dtype == np.uint8 and isinstance(images.stored, np.ndarray):
            return images.stored_rows()[:, 0]
        out = np.empty((len(images), *images.shape[2:]), dtype=np.uint8)
        for lo in range(0, len(images), chunk):
            out[lo:lo + chunk] = to_uint8(images[lo:lo + chunk])
        return out
    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    if t.ndim == 4:
        t = t[:, 0]
    if t.dtype == torch.uint8:
        return t.numpy()
    return ((t.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()


def thumbnails(images: np.ndarray | torch.Tensor | ImageArray, side: int = THUMB_SIDE, chunk: int = 512
               ) -> np.ndarray:
    """``(N, side * side)`` float32 thumbnails of ``(N, 1, H, W)`` / ``(N, H, W)`` images (``[-1, 1]`` floats or
    uint8), each row zero-mean and unit-norm, so a row product is the Pearson correlation of two thumbnails.
    Down-sampling is by area (``adaptive_avg_pool2d``: the mean of each ``H/side`` block when ``side`` divides
    ``H``). A constant image (zero variance) gets a zero row: it correlates 0 with everything (copies of it
    are found by the exact link)."""
    t = images if isinstance(images, (torch.Tensor, ImageArray)) else np.asarray(images)
    if t.ndim == 3:
        t = t[:, None]
    n = len(t)
    out = np.zeros((n, side * side), dtype=np.float32)
    for lo in range(0, n, chunk):
        x = t[lo:lo + chunk]
        x = (torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x).float()  # a copy: x may be read-only
        flat_in = x.reshape(len(x), -1)
        varies = flat_in.amax(dim=1) > flat_in.amin(dim=1)
        if x.shape[-2:] != (side, side):
            x = F.adaptive_avg_pool2d(x, side)
        x = x.reshape(len(x), -1).double()
        x = x - x.mean(dim=1, keepdim=True)
        norm = x.norm(dim=1, keepdim=True)
        x = torch.where(varies[:, None] & (norm > 0), x / norm.clamp_min(1e-300), torch.zeros_like(x))
        out[lo:lo + len(x)] = x.float().numpy()
    return out


def correlated_pairs(thumbs: np.ndarray, threshold: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of :func:`thumbnails` rows with correlation ``>= threshold`` (in ``(0, 1]``)
    and their correlations: ``((P, 2) int64, (P,) float32)``, ordered by ``i`` then ``j``. The Gram matrix is
    computed ``block x block`` at a time (upper triangle only), so memory stays ``O(block^2)``, not ``O(N^2)``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"correlation threshold must be in (0, 1], got {threshold!r}")
    t = torch.from_numpy(np.ascontiguousarray(thumbs, dtype=np.float32))
    n = len(t)
    pairs, corrs = [torch.zeros((0, 2), dtype=torch.int64)], [torch.zeros(0)]
    for i0 in range(0, n, block):
        a = t[i0:i0 + block]
        for j0 in range(i0, n, block):
            g = a @ t[j0:j0 + block].T
            if j0 == i0:
                g = torch.triu(g, diagonal=1)  # zeros below: never >= threshold > 0
            ii, jj = torch.nonzero(g >= threshold, as_tuple=True)
            if len(ii):
                pairs.append(torch.stack([ii + i0, jj + j0], dim=1))
                corrs.append(g[ii, jj])
    p, c = torch.cat(pairs), torch.cat(corrs)
    order = np.lexsort((p[:, 1].numpy(), p[:, 0].numpy()))
    return p.numpy()[order].astype(np.int64), c.numpy()[order].astype(np.float32)


def phash64(images_u8: np.ndarray, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """pHash of each uint8 ``(N, H, W)`` image as ``uint64`` (bit order = ``imagehash.phash(...).hash``
    flattened, most significant first), identical to ``imagehash.phash`` on the same ``L`` image."""
    if hash_size != 8:
        raise ValueError("phash64 packs 64-bit hashes: hash_size must be 8")
    n, chunk = len(images_u8), 4096  # thumbnails of 4,096 images at a time (float64: 32 MB)
    side = hash_size * highfreq_factor
    # only the top-left hash_size x hash_size block of scipy.fftpack.dct (type II, unnormalised) along both
    # axes is needed: two small matrix products instead of two full transforms
    k = np.arange(hash_size)[:, None]
    basis = 2.0 * np.cos(np.pi * k * (2 * np.arange(side)[None, :] + 1) / (2 * side))  # (hash_size, side)
    weights = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))
    out = np.zeros(n, dtype=np.uint64)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        thumbs = np.empty((m, side, side), dtype=np.float64)
        for i in range(m):
            thumbs[i] = np.asarray(Image.fromarray(np.asarray(images_u8[lo + i]), mode="L").resize(
                (side, side), Image.Resampling.LANCZOS))
        low = (basis @ thumbs @ basis.T).reshape(m, -1)
        bits = low > np.median(low, axis=1, keepdims=True)
        out[lo:lo + m] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def popcount64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64)


def near_pairs(hashes: np.ndarray, hamming: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, within ``hamming`` bits of each other, enough to connect every such
    pair: images with identical hashes are linked to the first of them (a star, not all pairs), distinct
    hashes within ``hamming`` bits are found by multi-index hashing over ``hamming + 1`` chunks and linked
    through their first images. Returns ``(P, 2)`` int64."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    # identical hashes: one representative each
    uniq, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    pairs = [_same_value_pairs(inverse)]
    if hamming > 0 and len(uniq) > 1:
        m = min(hamming + 1, 64)
        bounds = np.linspace(0, 64, m + 1).round().astype(int)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            mask = np.uint64((1 << int(hi - lo)) - 1)
            chunk = (uniq >> np.uint64(64 - hi)) & mask
            c = _close_pairs_in_buckets(chunk, uniq, hamming)
            # representative pairs -> image pairs (the same-hash star pairs link the other members)
            pairs.append(np.stack([first[c[:, 0]], first[c[:, 1]]], axis=1).astype(np.int64))
    out = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return np.sort(out, axis=1)


def _same_value_pairs(values: np.ndarray) -> np.ndarray:
    """Pairs linking every index to the first index with the same value (a spanning star per value)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    v = values[order]
    start = np.r_[True, v[1:] != v[:-1]]
    head = order[np.maximum.accumulate(np.where(start, np.arange(len(v)), 0))]
    keep = ~start
    return np.stack([head[keep], order[keep]], axis=1).astype(np.int64)


def _close_pairs_in_buckets(keys: np.ndarray, hashes: np.ndarray, hamming: int) -> np.ndarray:
    """Pairs of indices with equal ``keys`` whose ``hashes`` are within ``hamming`` bits. Vectorised over
    the sorted keys: offset ``k`` compares each element with the one ``k`` places later in its bucket."""
    order = np.argsort(keys, kind="stable")
    v = keys[order]
    out = [np.zeros((0, 2), dtype=np.int64)]
    k = 1
    while k < len(v):
        same = v[:-k] == v[k:]
        if not same.any():
            break
        i, j = order[:-k][same], order[k:][same]
        close = popcount64(hashes[i] ^ hashes[j]) <= hamming
        if close.any():
            out.append(np.stack([i[close], j[close]], axis=1).astype(np.int64))
        k += 1
    return np.concatenate(out)


def _group_ids(n: int, pairs: np.ndarray) -> np.ndarray:
    if len(pairs) == 0:
        return np.full(n, -1, dtype=np.int64)
    g = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    sizes = np.bincount(comp)
    out = np.full(n, -1, dtype=np.int64)
    # number groups in order of their first member so ids are stable
    next_id = 0
    mapping: dict[int, int] = {}
    for i in np.flatnonzero(sizes[comp] > 1):
        c = int(comp[i])
        if c not in mapping:
            mapping[c] = next_id
            next_id += 1
        out[i] = mapping[c]
    return out


def find_duplicates(images: np.ndarray | torch.Tensor | ImageArray, *, content_hashes: Sequence[str] | None = None,
                    ids: Sequence[str] | None = None, roles: Sequence[str] | None = None,
                    labels: Sequence[int] | None = None, near: bool = True, hamming: int = DEFAULT_HAMMING,
                    corr: float | None = None, max_examples: int = 10,
                    max_pairs: int = 500) -> tuple[np.ndarray, dict[str, Any]]:
    """Group exact and near-duplicate images over three links: exact (file bytes or pixels), pHash within
    ``hamming`` bits (when ``near``) and thumbnail correlation ``>= corr`` (when ``corr`` is not None).

    Returns ``dup_groups`` ``(N,)`` int64 (-1 = unique) and a report: ``n_groups``, ``n_images_in_groups``,
    ``n_exact_groups`` (groups made by exact copies alone), ``n_phash_groups`` (exact + pHash links, when
    ``near``), ``largest_group``, ``examples`` (id lists), ``cross_role_groups`` / ``cross_role_examples``
    (groups spanning two predefined roles, e.g. a Testing image with a copy in Training), ``label_conflicts``
    (groups holding both healthy and diseased images), ``n_<kind>_links`` per link kind, ``pairs`` (up to
    ``max_pairs`` linked pairs with ids, roles, labels, link kind, correlation and pHash distance; cross-role
    ones first, then the most similar) and ``weakest_pairs`` (the 50 least correlated links). Exact and
    identical-pHash links are spanning stars (each image linked to the first with the same value), not every
    pair; each pair is counted once, under the first of exact, phash, corr that links it.
    """
    u8 = to_uint8(images)
    n = len(u8)
    ids = list(ids) if ids is not None else [str(i) for i in range(n)]
    pixel_keys = np.array([hashlib.sha256(u8[i].tobytes()).hexdigest() for i in range(n)])
    exact = [_same_value_pairs(np.unique(pixel_keys, return_inverse=True)[1])]
    if content_hashes is not None:
        exact.append(_same_value_pairs(np.unique(np.asarray(content_hashes), return_inverse=True)[1]))
    links = {"exact": np.concatenate(exact)}
    hashes = phash64(u8) if near and n else None
    if hashes is not None:
        links["phash"] = near_pairs(hashes, int(hamming))
    thumbs = thumbnails(u8)
    if corr is not None:
        links["corr"] = correlated_pairs(thumbs, float(corr))[0]
    groups = _group_ids(n, np.concatenate(list(links.values())))

    method = "exact (file bytes + pixels)" + (" + pHash" if near else "") + (" + correlation" if corr else "")
    report: dict[str, Any] = {"method": method, "hamming": int(hamming) if near else None,
                              "corr": float(corr) if corr is not None else None, "thumbnail_side": THUMB_SIDE,
                              "n_images": n}
    members = _members(groups)
    report["n_groups"] = len(members)
    report["n_images_in_groups"] = int(sum(len(m) for m in members))
    report["n_exact_groups"] = int(_group_ids(n, links["exact"]).max() + 1) if n else 0
    if "phash" in links:
        report["n_phash_groups"] = int(_group_ids(n, np.concatenate([links["exact"], links["phash"]])).max() + 1)
    report["largest_group"] = max((len(m) for m in members), default=0)
    report["examples"] = [[ids[i] for i in m[:5]] for m in members[:max_examples]]
    r = np.asarray(roles, dtype=object) if roles is not None else None
    if r is not None:
        cross = [m for m in members if len({x for x in r[m] if x}) > 1]
        report["cross_role_groups"] = len(cross)
        report["cross_role_images"] = int(sum(len(m) for m in cross))
        report["cross_role_examples"] = [[f"{ids[i]} ({r[i]})" for i in m[:5]] for m in cross[:max_examples]]
    lab = np.asarray(labels) if labels is not None else None
    if lab is not None:
        conflict = [m for m in members if len(set(lab[m].tolist())) > 1]
        report["label_conflicts"] = len(conflict)
        report["label_conflict_examples"] = [[ids[i] for i in m[:5]] for m in conflict[:max_examples]]
    report.update(_pair_report(links, thumbs, hashes, ids, r, lab, max_pairs))
    return groups, report


def _pair_report(links: dict[str, np.ndarray], thumbs: np.ndarray, hashes: np.ndarray | None, ids: list[str],
                 roles: np.ndarray | None, labels: np.ndarray | None, max_pairs: int) -> dict[str, Any]:
    """Link counts per kind and the ``max_pairs`` most telling linked pairs (each pair once, under the first
    of exact, phash, corr that links it)."""
    n = len(ids)
    kinds = list(links)
    allp = np.concatenate([np.sort(links[k], axis=1) for k in kinds]).astype(np.int64)
    kind = np.concatenate([np.full(len(links[k]), i) for i, k in enumerate(kinds)])
    _, first = np.unique(allp[:, 0] * max(n, 1) + allp[:, 1], return_index=True)
    p, kind = allp[first], kind[first]
    out: dict[str, Any] = {f"n_{k}_links": int((kind == i).sum()) for i, k in enumerate(kinds)}
    c = np.einsum("ij,ij->i", thumbs[p[:, 0]], thumbs[p[:, 1]]) if len(p) else np.zeros(0)
    d = popcount64(hashes[p[:, 0]] ^ hashes[p[:, 1]]) if hashes is not None and len(p) else None
    cross = np.array([bool(roles[i]) and bool(roles[j]) and roles[i] != roles[j] for i, j in p] if roles is not None
                     else np.zeros(len(p)), dtype=bool).reshape(-1)
    out["n_cross_role_links"] = int(cross.sum()) if roles is not None else None
    order = np.lexsort((d if d is not None else np.zeros(len(p)), -c, ~cross))
    out["pairs"] = _pair_rows(order[:max_pairs], p, kind, kinds, c, d, ids, roles, labels)
    # the borderline links, to look at when judging a threshold
    out["weakest_pairs"] = _pair_rows(np.argsort(c, kind="stable")[:min(50, max_pairs)], p, kind, kinds, c, d,
                                      ids, roles, labels)
    return out


def _pair_rows(order: np.ndarray, p: np.ndarray, kind: np.ndarray, kinds: list[str], c: np.ndarray,
               d: np.ndarray | None, ids: list[str], roles: np.ndarray | None,
               labels: np.ndarray | None) -> list[dict[str, Any]]:
    rows = []
    for k in order:
        i, j = int(p[k, 0]), int(p[k, 1])
        row: dict[str, Any] = {"ids": [ids[i], ids[j]], "link": kinds[kind[k]], "corr": round(float(c[k]), 5),
                               "phash_distance": int(d[k]) if d is not None else None}
        if roles is not None:
            row["roles"] = [str(roles[i]), str(roles[j])]
        if labels is not None:
            row["labels"] = [int(labels[i]), int(labels[j])]
        rows.append(row)
    return rows


def _members(groups: np.ndarray) -> list[np.ndarray]:
    if len(groups) == 0 or groups.max() < 0:
        return []
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    order, g = order[g >= 0], g[g >= 0]
    cuts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return [np.sort(x) for x in np.split(order, cuts[1:])]


def exact_groups(images: np.ndarray | torch.Tensor | ImageArray, content_hashes: Sequence[str] | None = None
                 ) -> np.ndarray:
    """``(N,)`` int64 exact-copy group per image (-1 = no copy): the :func:`find_duplicates` ``exact`` link alone
    (byte-identical files when ``content_hashes`` are given, or identical pixels)."""
    u8 = to_uint8(images)
    n = len(u8)
    keys = np.array([hashlib.sha256(u8[i].tobytes()).hexdigest() for i in range(n)])
    pairs = [_same_value_pairs(np.unique(keys, return_inverse=True)[1])] if n else []
    if content_hashes is not None and n:
        pairs.append(_same_value_pairs(np.unique(np.asarray(content_hashes), return_inverse=True)[1]))
    return _group_ids(n, np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64))
