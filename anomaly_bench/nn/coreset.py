"""Exact greedy k-center coreset (PatchCore), with the same picks as anomalib 2.7.0's ``KCenterGreedy``.

What follows anomalib (``anomalib/models/components/sampling/k_center_greedy.py``):

* the projection: anomalib's own ``SparseRandomProjection(eps=0.9)`` class is reused, fitted and applied to
  the whole embedding exactly as ``KCenterGreedy.select_coreset_idxs`` does (torch RNG for the signs and the
  non-zero counts, numpy's global RNG through ``sklearn.utils.random.sample_without_replacement``), so the
  projected features are bit-identical;
* the random start: ``torch.randint(high=N, size=(1,))`` drawn right after the projection, and it is part
  of the coreset (anomalib gh-3459);
* the distances: each point's running minimum over the chosen centres of
  ``torch.linalg.norm(f - c, ord=2, dim=1)`` in float32, ties broken towards the lowest index (what
  ``torch.max(dim=0)`` returns on the CPU), the chosen point set to 0. Coreset size ``int(N * ratio)``.

Where we deviate (speed, not result): anomalib recomputes ``||f - c||`` for all ``N`` points at every step
(an ``N x d`` temporary; 0.3-1 s per step at 614,400 x 329 on 2 CPU cores). Here (:func:`greedy_select`)

1. the running minima are evaluated lazily: a point's stored minimum is only an upper bound until it
   competes for the maximum, and only the few points with the largest bounds are brought up to date each
   step (a heap-like pool of the largest bounds avoids touching all ``N`` points);
2. bringing a point up to date uses squared distances ``||f||^2 - 2 f.c + ||c||^2`` (``||f||^2``
   precomputed; one matrix product per chunk of points against the new centres) as a filter with a
   rounding-error margin (``2 gamma (||f||^2 + ||c||^2)``, :func:`_gamma`) that makes it conservative;
3. for the (point, centre) pairs that pass, the distance is recomputed with anomalib's own arithmetic
   (``torch.linalg.norm(f - c, dim=1)`` row by row, which gives the same bits per row as the full call; the
   test suite checks this), so every minimum that decides a pick, and hence every pick, equals anomalib's.

Work is chunked, so the extra memory on top of the projected features is ``O(N)`` plus ``chunk_elems``
floats. Ties go as in anomalib's ``torch.max(dim=0)`` on the CPU: the lowest index among equal maxima.
``candidates > 0`` is an opt-in approximation (greedy on a random subset of rows); results carry
``exact=False`` then. ``impl="anomalib"`` runs anomalib's class itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

EPS_JL = 0.9  # anomalib's KCenterGreedy: SparseRandomProjection(eps=0.9)


@dataclass
class CoresetResult:
    """Indices into the embedding rows (selection order), whether they are exact, and run figures."""

    indices: list[int]
    exact: bool
    info: dict[str, Any] = field(default_factory=dict)


def coreset_size(n: int, sampling_ratio: float) -> int:
    """``int(n * ratio)`` as anomalib, with its error for an empty coreset."""
    size = int(n * sampling_ratio)
    if size <= 0:
        raise ValueError(f"coreset_size must be a positive integer, got {size}. "
                         f"Check sampling_ratio ({sampling_ratio}) and embedding size ({n}).")
    return size


def jl_min_dim(n_samples: int, eps: float = EPS_JL) -> int:
    """Projected dimension anomalib uses (Johnson-Lindenstrauss bound, as its ``SparseRandomProjection``)."""
    return int((4 * np.log(n_samples) / ((eps**2 / 2) - (eps**3 / 3))).astype(np.int64))


def project_like_anomalib(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected features and start index, consuming the torch/numpy RNGs exactly as anomalib does."""
    from anomalib.models.components.dimensionality_reduction import SparseRandomProjection

    if embedding.ndim == 2:
        # anomalib's projection is float32 throughout; a float64 bank (the exact regression checks) is selected
        # from its float32 copy, under a float32 default dtype
        embedding = embedding.float()
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            model = SparseRandomProjection(eps=EPS_JL)
            model.fit(embedding)
            features = model.transform(embedding)
        finally:
            torch.set_default_dtype(old)
    else:
        features = embedding.reshape(embedding.shape[0], -1)
    start = torch.randint(high=features.shape[0], size=(1,), device=features.device).squeeze()
    return features, start


def _make_bar(progress: bool | Callable | None, total: int, desc: str):
    if callable(progress):
        return progress(total, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=1.0, leave=False)


def _gamma(d: int) -> float:
    """Rounding margin: ``2 gamma (||f||^2 + ||c||^2)`` bounds the gap between the squared-distance formula
    evaluated in float32 (a product of length d + 2) and the square of anomalib's float32
    ``linalg.norm(f - c)``: each is within ``2 (d + 3) eps (||f||^2 + ||c||^2)`` of the true value; a factor
    of about 4 of slack on top."""
    return max(1e-5, 8.0 * (d + 4) * 2.0 ** -24)


@torch.no_grad()
def greedy_select(features: torch.Tensor, n_select: int, start: int | torch.Tensor, *,
                  pool_size: int = 8192, batch: int = 256, chunk_elems: int = 1 << 20,
                  progress: bool | Callable | None = False, desc: str = "coreset",
                  stats: dict | None = None) -> torch.Tensor:
    """Exact k-center greedy on already projected ``features`` (N, d) from ``start``; returns ``n_select``
    indices (LongTensor, selection order) equal to anomalib's ``KCenterGreedy`` loop.

    Lazy evaluation: ``key[i]`` is anomalib's running minimum of point ``i`` over the first ``last[i]``
    centres, an upper bound of its current minimum. Each step refreshes only the points with the largest
    keys (``batch`` of them, more when needed) against the centres added since their last refresh, until
    the best refreshed value is strictly above every other key: that point is anomalib's ``torch.max``
    pick (lowest index among equal maxima). Keys are kept in a pool of the ``pool_size`` largest, rebuilt
    when the answer may lie outside it. A refresh computes ``||f||^2 - 2 f.C^T + ||C||^2`` for a chunk of
    points against the new centres (one matrix product), then anomalib's ``linalg.norm(f - c)`` only for
    the (point, centre) pairs that may give the minimum, within a rounding margin (:func:`_gamma`).
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, d), got {tuple(features.shape)}")
    feats = features if features.dtype == torch.float32 else features.float()
    if not feats.is_contiguous():
        feats = feats.contiguous()
    n, d = feats.shape
    dev = feats.device
    n_select = int(n_select)
    if not 0 < n_select <= n:
        raise ValueError(f"n_select must be in 1..{n}, got {n_select}")
    gamma, rel = _gamma(d), 1e-5
    sel = torch.empty(n_select, dtype=torch.int64)
    p = int(start)
    sel[0] = p
    st = {"steps": n_select - 1, "refreshed": 0, "pairs": 0, "exact_pairs": 0, "pool_rebuilds": 0}
    if n_select == 1:
        if stats is not None:
            stats.update(st)
        return sel

    # step 0 exactly as anomalib: distances of every point to the start (chunks: bounded extra memory)
    fn = torch.empty(n, dtype=torch.float32, device=dev)
    key = torch.empty(n, dtype=torch.float32, device=dev)
    c0 = feats[p]
    big = 32768
    for lo in range(0, n, big):
        fr = feats[lo:lo + big]
        fn[lo:lo + big] = fr.pow(2).sum(1)
        key[lo:lo + big] = torch.linalg.norm(fr - c0, ord=2, dim=1)
    if not bool(torch.isfinite(key).all()):
        raise ValueError("coreset: the embedding has non-finite values")
    last = torch.ones(n, dtype=torch.int64, device=dev)      # centres accounted for in key
    centres = torch.empty(n_select, d, dtype=torch.float32, device=dev)
    cnorm2 = torch.empty(n_select, dtype=torch.float32, device=dev)
    centres[0] = c0
    cnorm2[0] = c0.dot(c0)
    # centres as columns of the augmented product used by refresh(): [-2c; 1; (1-2g)||c||^2]
    caug = torch.empty(d + 2, n_select, dtype=torch.float32, device=dev)
    ones = torch.ones(1024, 1, dtype=torch.float32, device=dev)

    cmax = torch.zeros(1, dtype=torch.float32, device=dev)     # largest ||c||^2 so far

    def add_centre(j: int, c: torch.Tensor) -> None:
        centres[j] = c
        cnorm2[j] = c.dot(c)
        torch.maximum(cmax, cnorm2[j:j + 1], out=cmax)
        caug[:d, j] = -2.0 * c
        caug[d, j] = 1.0
        caug[d + 1, j] = cnorm2[j] * (1.0 - 2.0 * gamma)

    add_centre(0, c0)
    ncent = 1

    def refresh(rows: torch.Tensor) -> None:
        """Bring ``key`` of ``rows`` up to date with centres ``last[i]..ncent-1`` (exact anomalib values)."""
        rows = rows[last.index_select(0, rows) < ncent]
        if rows.numel() == 0:
            return
        st["refreshed"] += int(rows.numel())
        rows = rows[torch.argsort(last.index_select(0, rows))]     # similar staleness in one chunk
        lo = 0
        while lo < len(rows):
            t0 = int(last[rows[lo]])                 # most stale row of this chunk: widest centre range
            step = max(1, min(1024, chunk_elems // max(ncent - t0, 1)))
            ii = rows[lo:lo + step]
            lo += step
            li = last.index_select(0, ii)
            fi = feats.index_select(0, ii)
            fni = fn.index_select(0, ii)
            # lower bounds of anomalib's squared distances in one product:
            # [f, (1-2g)||f||^2, 1] . [-2c, 1, (1-2g)||c||^2] = ||f||^2 - 2 f.c + ||c||^2 - 2g(||f||^2 + ||c||^2)
            lhs = torch.cat([fi, (fni * (1.0 - 2.0 * gamma))[:, None], ones[:len(ii)]], 1)
            lb = lhs @ caug[:, t0:ncent]
            # columns a row has seen already (t < last[i]) stay in: their distances are >= key[i], so they
            # never lower it, and the bounds below stay valid with them
            ki = key.index_select(0, ii)
            mn, am = lb.min(1)
            # upper bound of the smallest squared distance (min lb + 4g (||f||^2 + max ||c||^2)), and key^2
            lim = torch.minimum(mn + 4.0 * gamma * (fni + cmax[0]), ki * ki * (1.0 + rel))
            cnt = (lb <= lim[:, None]).sum(1)
            st["pairs"] += lb.numel()
            one = (cnt == 1).nonzero().squeeze(1)       # the usual case: only the arg-min can be the minimum
            r, t = one, am.index_select(0, one)
            multi = (cnt > 1).nonzero().squeeze(1)
            if len(multi):
                sub = (lb.index_select(0, multi) <= lim.index_select(0, multi)[:, None]).nonzero()
                r, t = torch.cat([r, multi.index_select(0, sub[:, 0])]), torch.cat([t, sub[:, 1]])
            t = t + t0
            fresh = t >= li.index_select(0, r)
            r, t = r[fresh], t[fresh]
            if len(r):
                st["exact_pairs"] += len(r)
                ex = torch.linalg.norm(fi.index_select(0, r) - centres.index_select(0, t), ord=2, dim=1)
                key[ii] = ki.scatter_reduce(0, r, ex, reduce="amin", include_self=True)
            last[ii] = ncent

    pool = torch.empty(0, dtype=torch.int64, device=dev)
    tau = math.inf   # every key outside the pool is <= tau (keys only decrease)

    def rebuild(size: int) -> None:
        nonlocal pool, tau
        st["pool_rebuilds"] += 1
        k = min(size + 1, n)
        vals, idx = torch.topk(key, k)
        pool, tau = (idx[:size], float(vals[size])) if size < n else (idx, -math.inf)

    bar = _make_bar(progress, n_select - 1, desc)
    try:
        # anomalib's first pick (after the distances to the start), then the lazy loop
        p = int(torch.max(key, dim=0)[1])
        for s in range(1, n_select):
            key[p] = 0.0                       # anomalib: min_distances.scatter_(idx, 0)
            sel[s] = p
            add_centre(ncent, feats[p])
            ncent += 1
            bar.update(1)
            if s == n_select - 1:
                break
            k, size = batch, max(pool_size, batch)
            if not len(pool):
                rebuild(size)
            while True:
                kp = key.index_select(0, pool)
                kk = min(k + 1, len(pool))
                vals, loc = torch.topk(kp, kk)
                top = pool.index_select(0, loc[:k])
                thr = max(float(vals[k]) if k < len(pool) else -math.inf, tau)
                refresh(top)
                ktop = key.index_select(0, top)
                best = ktop.max()
                if float(best) > thr:
                    break
                if k < len(pool) and float(vals[k]) >= tau:
                    k *= 4                     # a pool member may still be larger: look deeper
                else:
                    size = max(size, 4 * k)    # the answer may be outside the pool: rebuild it larger
                    rebuild(size)
                    k = batch
            p = int(top[ktop == best].min())
    finally:
        bar.close()
    if stats is not None:
        stats.update(st)
    return sel


def anomalib_select(embedding: torch.Tensor, sampling_ratio: float) -> list[int]:
    """anomalib 2.7.0's own ``KCenterGreedy(embedding, ratio).select_coreset_idxs()`` (the reference)."""
    from anomalib.models.components import KCenterGreedy

    return KCenterGreedy(embedding=embedding, sampling_ratio=sampling_ratio).select_coreset_idxs()


def select_coreset(embedding: torch.Tensor, sampling_ratio: float, *, impl: str = "fast", candidates: int = 0,
                   progress: bool | Callable | None = False,
                   desc: str = "coreset") -> CoresetResult:
    """Coreset indices for ``embedding`` (N, D). ``impl='fast'`` (default) gives anomalib's picks, faster;
    ``impl='anomalib'`` calls anomalib's ``KCenterGreedy``. ``candidates > 0`` (approximate, off by default):
    run the greedy on ``candidates`` random rows only (drawn with the torch RNG before the projection).
    Seed torch and numpy before calling, as for anomalib."""
    if impl not in ("fast", "anomalib"):
        raise ValueError(f"coreset impl must be 'fast' or 'anomalib', got {impl!r}")
    t0 = time.perf_counter()
    n = embedding.shape[0]
    size = coreset_size(n, sampling_ratio)
    info: dict[str, Any] = {"impl": impl, "n_rows": n, "coreset_size": size, "candidates": int(candidates)}
    subset = None
    emb = embedding
    if candidates and candidates < n:
        if size > candidates:
            raise ValueError(f"coreset_candidates={candidates} is smaller than the coreset size {size}")
        subset = torch.randperm(n, device=embedding.device)[:candidates].sort().values
        emb = embedding.index_select(0, subset)
    if impl == "anomalib" and subset is None:
        idx = anomalib_select(emb, sampling_ratio)
    elif impl == "anomalib":
        from anomalib.models.components import KCenterGreedy

        sampler = KCenterGreedy(embedding=emb, sampling_ratio=sampling_ratio)
        sampler.coreset_size = size
        idx = sampler.select_coreset_idxs()
    else:
        features, start = project_like_anomalib(emb)
        info["projected_dim"] = int(features.shape[1])
        stats: dict = {}
        idx = greedy_select(features, size, start, progress=progress, desc=desc,
                            stats=stats).cpu().tolist()
        info.update(stats)
        del features
    if subset is not None:
        idx = subset[torch.as_tensor(idx, device=subset.device)].cpu().tolist()
    info["seconds"] = round(time.perf_counter() - t0, 3)
    return CoresetResult(indices=[int(i) for i in idx], exact=subset is None, info=info)
