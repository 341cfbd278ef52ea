"""Procedural brain-MRI-like phantom: the embedded, offline, deterministic default dataset.

Axial T1-like slices (bright scalp, dark skull, CSF rim, folded grey-matter cortex around brighter white
matter, dark butterfly-shaped lateral ventricles, interhemispheric fissure) with per-subject anatomy, smooth
tissue texture, a multiplicative bias field, a random global gain and Rician noise. Each subject is healthy
or diseased; a diseased subject carries one lesion type on every one of its slices:

* ``mass``: a bright, irregular mass with an oedema halo (darker or brighter than the tissue);
* ``scattered``: small hyper-intense white-matter lesions (MS-like);
* ``ventriculomegaly``: enlarged ventricles (the mask is the extra ventricle area).

Every diseased slice is rendered together with its lesion-free *twin* (same anatomy, bias field, noise
draw and intensity normalisation), so the masks are exact: the lesion is the only difference between a
diseased slice and its twin (:func:`phantom_arrays` returns the twins). A mask holds the pixels whose centre
lies in the lesion (mass core + halo, blobs) or, for ventriculomegaly, that gain at least a quarter of
their area as ventricle; edges are partial-volume blended, so a lesion can also touch the one-pixel rim
around its mask (tests check that >99.5 % of the change lies in the mask plus that rim). Lesion contrast and size vary,
some lesions are subtle. Each image is divided by the median of its own head foreground times a random
window width before clipping to ``[-1, 1]`` (WhiteStripe-like normalisation, robust to lesions), so the mean
intensity of an image does not tell healthy from diseased.

This is not a model of any authors' data; it exists so that the suite, its tests and ``anomaly-bench run``
work with no download. All randomness comes from ``numpy.random.default_rng`` seeded by ``seed`` and the
block index, so the same parameters and seed give bit-identical arrays from run to run. (Across CPUs with
different SIMD instruction sets, numpy's float32 ``cos``/``arctan2`` may differ in the last bit; the
fingerprint is then different while the images are the same to ~1e-6.)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.data.records import ImageDataset

LESION_TYPES = ("mass", "scattered", "ventriculomegaly")
DEFAULTS: dict[str, Any] = {"n_subjects": 200, "slices_per_subject": 10, "size": 64, "diseased_fraction": 0.5,
                            "seed": 0, "lesion_types": LESION_TYPES}
#: Images rendered per vectorised block (at 64 px; scaled down for larger images). Part of the seed
#: contract: changing it changes the random streams.
_BLOCK_PIXELS = 64 * 64 * 64
#: the foreground median maps to 1/window of the intensity range before the shift to [-1, 1]
_WINDOW = (1.8, 2.4)
_MAX_BLOBS = 10


def _soft(signed: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume coverage from a signed distance (positive inside), ramp one pixel wide."""
    return np.clip(signed / width + 0.5, 0.0, 1.0)


def _lerp(a: np.ndarray, b: np.ndarray | float, alpha: np.ndarray) -> np.ndarray:
    return a + (b - a) * alpha


def _smooth_fields(rng: np.random.Generator, n: int, size: int, sigma_frac: float) -> np.ndarray:
    """``n`` smooth random fields of shape (size, size), zero mean and unit std each."""
    f = gaussian_filter(rng.standard_normal((n, size, size)).astype(np.float32),
                        sigma=(0, sigma_frac * size, sigma_frac * size), mode="wrap")
    f -= f.mean(axis=(1, 2), keepdims=True)
    f /= f.std(axis=(1, 2), keepdims=True) + 1e-8
    return f


def _col(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float32).reshape(-1, 1, 1)


def _render_block(rng: np.random.Generator, kinds: np.ndarray, k: int, size: int) -> dict[str, np.ndarray]:
    """Render ``len(kinds)`` subjects × ``k`` slices. ``kinds``: 0 healthy, 1.. index into LESION_TYPES + 1."""
    s = len(kinds)
    n = s * k
    pix = 2.0 / size  # pixel size in the [-1, 1] coordinate frame
    f32 = np.float32

    def per_subject(lo, hi):
        return np.repeat(rng.uniform(lo, hi, s), k).astype(f32)

    # ---- slice position along the stack (per subject: span and offset) -> anatomy changes with z
    span = rng.uniform(0.45, 0.8, s)
    z0 = rng.uniform(-0.2, 0.2, s)
    steps = np.linspace(-1.0, 1.0, k) if k > 1 else np.zeros(1)
    z = (z0[:, None] + span[:, None] * steps[None, :]).reshape(-1).astype(f32)
    zs = np.sqrt(np.clip(1.0 - (0.85 * z) ** 2, 0.25, 1.0))  # ellipsoid cross-section, 0.5..1

    # ---- head frame: centre, rotation (per subject + small per-slice jitter)
    cx = per_subject(-0.06, 0.06) + rng.normal(0, 0.008, n).astype(f32)
    cy = per_subject(-0.06, 0.06) + rng.normal(0, 0.008, n).astype(f32)
    th = np.repeat(rng.normal(0, 0.14, s), k).astype(f32) + rng.normal(0, 0.015, n).astype(f32)
    lin = ((np.arange(size, dtype=f32) + 0.5) / size * 2 - 1)
    gx, gy = lin[None, None, :], lin[None, :, None]
    ct, st = _col(np.cos(th)), _col(np.sin(th))
    dx, dy = gx - _col(cx), gy - _col(cy)
    u = ct * dx + st * dy   # left-right
    v = -st * dx + ct * dy  # anterior(-)-posterior(+)

    def ell(a, b, ou=0.0, ov=0.0):
        """Normalised elliptic radius and angle in the head frame; a, b, ou, ov are (n,) arrays."""
        uu, vv = (u - _col(ou)) / _col(a), (v - _col(ov)) / _col(b)
        return np.sqrt(uu * uu + vv * vv), np.arctan2(vv, uu)

    # head outline (scalp), skull, CSF rim, brain
    ha = per_subject(0.66, 0.78) * (0.72 + 0.28 * zs)
    hb = per_subject(0.80, 0.92) * (0.72 + 0.28 * zs)
    t_scalp, t_skull, t_csf = per_subject(0.035, 0.06), per_subject(0.03, 0.055), per_subject(0.012, 0.03)
    m_head = (ha + hb) / 2
    r_head, phi_head = ell(ha, hb)
    # a slightly non-elliptic head (flatter back, narrower front)
    head_wob = 1 + _col(per_subject(-0.04, 0.04)) * np.sin(phi_head)
    r_head = r_head / head_wob
    a_head = _soft((1 - r_head) * _col(m_head), pix)
    r_skull = r_head * _col(m_head / (m_head - t_scalp))
    a_skull = _soft((1 - r_skull) * _col(m_head - t_scalp), pix)
    m_in = m_head - t_scalp - t_skull
    r_csf = r_head * _col(m_head / m_in)
    a_csf = _soft((1 - r_csf) * _col(m_in), pix)
    m_brain = m_in - t_csf
    # brain boundary: low-order wobble (per subject, slowly varying with slice)
    r_brain = r_head * _col(m_head / m_brain)
    wob = np.ones_like(r_brain)
    for m in (2, 3, 4, 5):
        amp = per_subject(0.0, 0.025 / (m - 1) ** 0.5)
        ph = per_subject(0, 2 * np.pi) + rng.normal(0, 0.2, n).astype(f32)
        wob = wob + _col(amp) * np.cos(m * phi_head + _col(ph))
    r_brain = r_brain / wob
    a_brain = _soft((1 - r_brain) * _col(m_brain), pix)
    inside_brain = r_brain < 1

    # ---- textures: per-subject fields rotating smoothly with z, plus a per-slice component
    omega = np.repeat(rng.uniform(1.5, 3.0, s), k).astype(f32)
    fa, fb = _smooth_fields(rng, s, size, 0.06), _smooth_fields(rng, s, size, 0.06)
    tex = (_col(np.cos(omega * z)) * np.repeat(fa, k, axis=0) + _col(np.sin(omega * z)) * np.repeat(fb, k, axis=0))
    tex = 0.8 * tex + 0.6 * _smooth_fields(rng, n, size, 0.025)
    tex_amp = _col(per_subject(0.03, 0.08))

    # ---- grey/white matter: a folded GM/WM border (gyri: an irregular angular pattern per subject that
    # drifts with z) and CSF-filled sulci running in from the surface where the white matter recedes
    g = np.zeros_like(r_brain)
    for _ in range(5):
        mfreq = np.repeat(rng.integers(9, 27, s), k).astype(f32)
        ph = per_subject(0, 2 * np.pi) + z * per_subject(-2.0, 2.0)
        g = g + _col(per_subject(0.5, 1.0)) * np.cos(_col(mfreq) * phi_head + _col(ph))
    g = g / np.sqrt((g * g).mean(axis=(1, 2), keepdims=True) + 1e-6)
    wm_frac = _col(per_subject(0.74, 0.84))
    wm_edge = wm_frac * (1 + 0.05 * g + 0.02 * tex)
    r_wm = r_brain / wm_edge
    a_wm = _soft((1 - r_wm) * _col(m_brain) * wm_edge, pix)
    depth = np.clip((r_brain - wm_edge * 0.98) / 0.05, 0, 1)  # sulci reach from the surface to the WM
    sulc = np.clip((-g - 1.5) / 0.25, 0, 1) * depth
    fis_w = per_subject(0.6, 1.2) * pix
    fissure = _soft(_col(fis_w) - np.abs(u - _col(np.repeat(rng.normal(0, 0.01, s), k))), pix) * \
        np.clip((np.abs(v) / _col(hb) - 0.45) / 0.12, 0, 1)

    # ---- ventricles: two lateral ventricles (frontal horn + body), butterfly-like; size varies with z
    vz = (0.3 + 0.7 * np.exp(-((z - 0.05) / 0.6) ** 2)).astype(f32)
    vscale = per_subject(0.8, 1.2) * vz * (m_brain / 0.62)
    vtilt = per_subject(0.3, 0.55)
    vspread = per_subject(0.85, 1.2)

    def ventricles(idx, scale):
        """Coverage of the ventricles of images ``idx``, each enlarged by ``scale`` (n_idx,)."""
        alpha = np.zeros((len(idx), size, size), f32)
        for side in (-1.0, 1.0):
            for (ou, ov, a, b, rot) in ((0.09, -0.13, 0.045, 0.15, -1.0), (0.11, 0.12, 0.035, 0.15, 0.5)):
                su, sv = side * ou * vspread[idx] * vscale[idx], ov * vscale[idx]
                ang = side * rot * vtilt[idx]
                ca, sa = _col(np.cos(ang)), _col(np.sin(ang))
                du, dv = u[idx] - _col(su), v[idx] - _col(sv)
                sa_, sb_ = a * vscale[idx] * scale, b * vscale[idx] * scale
                ia, ib = _col(1 / sa_), _col(1 / sb_)
                ru = (ca * du + sa * dv) * ia
                rv = (-sa * du + ca * dv) * ib
                r2 = ru * ru + rv * rv
                # first-order signed distance to the (elongated) ellipse: (1 - rr) / |grad rr|
                grad = np.sqrt((ru * ru * ia * ia + rv * rv * ib * ib + 1e-4 * ia * ia) / (r2 + 1e-4))
                alpha = np.maximum(alpha, _soft((1 - np.sqrt(r2)) / grad, pix))
        return alpha

    # ---- tissue intensities (T1-like: WM > GM > CSF; bright scalp, dark skull)
    i_scalp, i_skull, i_csf = per_subject(0.6, 0.95), per_subject(0.02, 0.1), per_subject(0.06, 0.16)
    i_gm, i_wm = per_subject(0.38, 0.48), per_subject(0.52, 0.62)
    img = _col(i_scalp) * (1 + 0.15 * tex) * a_head
    img = _lerp(img, _col(i_skull), a_skull)
    img = _lerp(img, _col(i_csf), a_csf)
    img = _lerp(img, _col(i_gm) * (1 + tex_amp * tex), a_brain)
    img = _lerp(img, _col(i_wm) * (1 + tex_amp * tex), a_wm * a_brain)
    img = _lerp(img, _col(i_csf), 0.7 * sulc * a_brain)
    img = _lerp(img, _col(i_csf), fissure * a_brain)
    base = img
    v_norm = ventricles(np.arange(n), np.ones(n, f32)) * a_brain
    twin = _lerp(base, _col(i_csf), v_norm)

    # ---- lesions
    kind = np.repeat(kinds, k)
    dis = twin.copy()
    mask = np.zeros((n, size, size), bool)
    ref = (i_gm + i_wm) / 2  # lesion contrast is relative to brain tissue

    # (1) mass + oedema halo: 3-D blob, cross-section size follows z
    im = np.flatnonzero(kind == 1)
    if len(im):
        ns = len(im) // k
        rad = np.repeat(rng.uniform(0.10, 0.26, ns), k)  # core radius at its widest slice
        zc = z[im] + np.repeat(rng.uniform(-0.3, 0.3, ns), k)  # mass centre offset along the stack
        zc = np.repeat(zc.reshape(ns, k).mean(1), k)
        rz = np.repeat(rng.uniform(0.6, 1.2, ns), k)
        rad_k = rad * np.sqrt(np.clip(1 - ((z[im] - zc) / rz) ** 2, 0.5 ** 2, 1)) * zs[im]
        pr = np.repeat(np.sqrt(rng.uniform(0.0, 1.0, ns)) * 0.55, k)
        pa = np.repeat(rng.uniform(0, 2 * np.pi, ns), k)
        ba, bb = m_brain[im] * ha[im] / m_head[im], m_brain[im] * hb[im] / m_head[im]
        mu = pr * np.cos(pa) * ba + rng.normal(0, 0.01, len(im))
        mv = pr * np.sin(pa) * bb + rng.normal(0, 0.01, len(im))
        halo = np.repeat(rng.uniform(1.3, 1.9, ns), k)
        c_core = np.repeat(rng.uniform(0.12, 0.6, ns) ** 1.3 * 1.2, k) * ref[im]  # many subtle, some strong
        c_halo = np.repeat(rng.choice([-1.0, 1.0], ns) * rng.uniform(0.05, 0.3, ns), k) * ref[im]
        du, dv = u[im] - _col(mu), v[im] - _col(mv)
        dist = np.sqrt(du * du + dv * dv)
        ang = np.arctan2(dv, du)
        irr = np.ones_like(dist)
        for m in (2, 3, 5):
            irr = irr + _col(np.repeat(rng.uniform(0, 0.12, ns), k)) * \
                np.cos(m * ang + _col(np.repeat(rng.uniform(0, 2 * np.pi, ns), k)))
        d = dist / (_col(rad_k) * irr)  # 1 at the core border
        core = _soft((1 - d) * _col(rad_k), pix)
        hal = np.clip((_col(halo) - d) / (_col(halo) - 1), 0, 1) ** 0.7 * (1 - core)
        mtex = 1 + 0.15 * tex[im]
        delta = (_col(c_core) * core * mtex + _col(c_halo) * hal) * a_brain[im]
        dis[im] = twin[im] + delta
        mask[im] = (d < _col(halo)) & inside_brain[im]

    # (2) scattered small hyper-intense white-matter lesions (new draw on every slice)
    isc = np.flatnonzero(kind == 2)
    if len(isc):
        ni = len(isc)
        nb = rng.integers(2, _MAX_BLOBS + 1, ni)
        active = np.arange(_MAX_BLOBS)[None, :] < nb[:, None]
        br = rng.uniform(1.1, 2.6, (ni, _MAX_BLOBS)) * (size / 64) * pix  # radius: 1.1-2.6 px at 64 px
        # candidate centres in the brain; keep those whose centre pixel is white matter, not ventricle
        nc = 4 * _MAX_BLOBS
        pr = np.sqrt(rng.uniform(0.02, 1.0, (ni, nc))) * 0.7
        pa = rng.uniform(0, 2 * np.pi, (ni, nc))
        ba = (m_brain * ha / m_head)[isc][:, None]
        bb = (m_brain * hb / m_head)[isc][:, None]
        cu, cv = pr * np.cos(pa) * ba, pr * np.sin(pa) * bb
        c_, s_ = np.cos(th[isc])[:, None], np.sin(th[isc])[:, None]
        col = np.clip(((cx[isc][:, None] + c_ * cu - s_ * cv + 1) / pix).astype(int), 0, size - 1)
        row = np.clip(((cy[isc][:, None] + s_ * cu + c_ * cv + 1) / pix).astype(int), 0, size - 1)
        ii = np.arange(ni)[:, None]
        ok = (a_wm[isc][ii, row, col] > 0.5) & (v_norm[isc][ii, row, col] < 0.05)
        pick = np.argsort(~ok, axis=1, kind="stable")[:, :_MAX_BLOBS]
        bu = np.take_along_axis(cu, pick, 1).astype(f32)
        bv = np.take_along_axis(cv, pick, 1).astype(f32)
        br = br.astype(f32)
        cs = np.repeat(rng.uniform(0.15, 0.7, ni // k), k)[:, None] * rng.uniform(0.7, 1.3, (ni, _MAX_BLOBS))
        cs = cs * ref[isc][:, None] * active
        du = u[isc][:, None] - bu[:, :, None, None]
        dv = v[isc][:, None] - bv[:, :, None, None]
        d = np.sqrt(du * du + dv * dv) / br[:, :, None, None]
        prof = np.sqrt(np.clip(1 - d * d, 0, 1)) * 0.6 + 0.4 * _soft((1 - d) * br[:, :, None, None], pix)
        delta = (cs[:, :, None, None].astype(f32) * prof).max(axis=1) * a_brain[isc] * (1 - v_norm[isc])
        dis[isc] = twin[isc] + delta
        mask[isc] = ((d < 1) & active[:, :, None, None]).any(axis=1) & inside_brain[isc] & (v_norm[isc] < 0.5)

    # (3) ventriculomegaly: enlarged ventricles; the mask is the extra CSF area
    iv = np.flatnonzero(kind == 3)
    if len(iv):
        grow = np.repeat(rng.uniform(1.3, 2.1, len(iv) // k), k).astype(f32)
        v_big = ventricles(iv, grow) * a_brain[iv]
        dis[iv] = _lerp(base[iv], _col(i_csf[iv]), v_big)
        # the extra ventricle area: pixels that gain at least a quarter of their area as CSF (partial volume)
        mask[iv] = (v_big - v_norm[iv] >= 0.25) & inside_brain[iv]

    # ---- acquisition: bias field, global gain, Rician noise (same draw for the twin)
    b = rng.normal(0, 0.12, (3, n)).astype(f32)
    bias = np.exp(_col(b[0]) * gx + _col(b[1]) * gy + _col(b[2]) * (gx * gx + gy * gy - 0.66))
    gain = _col(rng.uniform(0.6, 1.5, n)) * bias
    sigma = _col(rng.uniform(0.008, 0.035, n) * i_wm)
    n1 = rng.standard_normal((n, size, size)).astype(f32) * sigma
    n2 = rng.standard_normal((n, size, size)).astype(f32) * sigma

    def acquire(x):
        x = x * gain
        return np.sqrt((x + n1) ** 2 + n2 ** 2)

    dis, twin = acquire(dis), acquire(twin)
    # intensity normalisation (WhiteStripe-like): divide by the median of the head foreground (pixels above
    # the image mean), robust to lesions, times a random window width; then clip to [-1, 1]
    flat = dis.reshape(n, -1)
    is_fg = flat > flat.mean(axis=1, keepdims=True)
    srt = np.sort(np.where(is_fg, flat, -1.0), axis=1)  # background first, then the foreground in order
    n_fg = is_fg.sum(axis=1)
    q = srt[np.arange(n), flat.shape[1] - n_fg + n_fg // 2]
    q = q * rng.uniform(_WINDOW[0], _WINDOW[1], n).astype(f32)
    q = _col(np.maximum(q, 1e-6))
    dis = np.clip(dis / q, 0, 1) * 2 - 1
    twin = np.clip(twin / q, 0, 1) * 2 - 1
    return {"images": dis.astype(f32), "twins": twin.astype(f32), "masks": mask, "z": z}


def _check(n_subjects, slices_per_subject, size, diseased_fraction, lesion_types, seed=0) -> tuple[str, ...]:
    def is_int(x):
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if not is_int(seed) or seed < 0:
        raise ConfigError(f"phantom: seed must be an integer >= 0, got {seed!r}")
    if not is_int(n_subjects) or n_subjects < 1:
        raise ConfigError(f"phantom: n_subjects must be an integer >= 1, got {n_subjects!r}")
    if not is_int(slices_per_subject) or slices_per_subject < 1:
        raise ConfigError(f"phantom: slices_per_subject must be an integer >= 1, got {slices_per_subject!r}")
    if not is_int(size) or size < 32:
        raise ConfigError(f"phantom: size must be an integer >= 32 (pixels), got {size!r}")
    if not isinstance(diseased_fraction, (int, float)) or not 0 <= diseased_fraction <= 1:
        raise ConfigError(f"phantom: diseased_fraction must be in [0, 1], got {diseased_fraction!r}")
    if isinstance(lesion_types, str):
        lesion_types = (lesion_types,)
    lesion_types = tuple(lesion_types)
    bad = [t for t in lesion_types if t not in LESION_TYPES]
    if bad or not lesion_types or len(set(lesion_types)) != len(lesion_types):
        raise ConfigError(f"phantom: lesion_types must be distinct names from {list(LESION_TYPES)}, "
                          f"got {list(lesion_types)}")
    return lesion_types


def phantom_arrays(n_subjects: int = 200, slices_per_subject: int = 10, size: int = 64,
                   diseased_fraction: float = 0.5, seed: int = 0,
                   lesion_types: Sequence[str] = LESION_TYPES) -> dict[str, Any]:
    """The phantom as numpy arrays, including the lesion-free twin of every slice.

    Returns ``images`` and ``twins`` ``(N, H, W)`` float32 in ``[-1, 1]`` (``twins`` equals ``images``
    for healthy slices), ``masks`` ``(N, H, W)`` bool, ``labels`` ``(N,)``, ``classes``, ``ids``,
    ``subjects`` and ``z`` (slice position along the stack). Slices are ordered subject by subject.
    """
    lesion_types = _check(n_subjects, slices_per_subject, size, diseased_fraction, lesion_types, seed)
    k = slices_per_subject
    master = np.random.default_rng([int(seed), 0])
    n_dis = int(round(n_subjects * diseased_fraction))
    kinds = np.zeros(n_subjects, np.int64)
    order = master.permutation(n_subjects)
    # lesion types in equal shares over the diseased subjects, shuffled
    type_codes = np.array([LESION_TYPES.index(t) + 1 for t in lesion_types])
    kinds[order[:n_dis]] = master.permutation(np.resize(type_codes, n_dis))
    per_block = max(1, _BLOCK_PIXELS // (size * size * k))
    parts = []
    for bi, start in enumerate(range(0, n_subjects, per_block)):
        rng = np.random.default_rng([int(seed), 1, bi])
        parts.append(_render_block(rng, kinds[start:start + per_block], k, size))
    out = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    kind = np.repeat(kinds, k)
    names = ("healthy",) + LESION_TYPES
    out["labels"] = (kind > 0).astype(np.int64)
    out["classes"] = [names[c] for c in kind]
    w = max(4, len(str(n_subjects - 1)))
    wk = max(2, len(str(k - 1)))
    out["subjects"] = [f"s{i:0{w}d}" for i in range(n_subjects) for _ in range(k)]
    out["ids"] = [f"s{i:0{w}d}_k{j:0{wk}d}" for i in range(n_subjects) for j in range(k)]
    return out


def generate_phantom(n_subjects: int = 200, slices_per_subject: int = 10, size: int = 64,
                     diseased_fraction: float = 0.5, seed: int = 0,
                     lesion_types: Sequence[str] = LESION_TYPES) -> ImageDataset:
    """The phantom as an :class:`ImageDataset` named ``phantom`` (default: 200 subjects × 10 slices, 64 px)."""
    lesion_types = _check(n_subjects, slices_per_subject, size, diseased_fraction, lesion_types, seed)
    a = phantom_arrays(n_subjects, slices_per_subject, size, diseased_fraction, seed, lesion_types)
    params = {"n_subjects": n_subjects, "slices_per_subject": slices_per_subject, "size": size,
              "diseased_fraction": diseased_fraction, "seed": seed, "lesion_types": list(lesion_types)}
    return ImageDataset("phantom", torch.from_numpy(a["images"][:, None]), a["labels"], a["ids"],
                        subjects=a["subjects"], masks=a["masks"], classes=a["classes"],
                        meta={"generator": "anomaly_bench.data.phantom", "params": params})


def save_preview(path: str, n_each: int = 4, seed: int = 0, size: int = 64) -> None:
    """PNG with healthy slices, then one row per lesion type (image, twin difference, mask contour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = phantom_arrays(n_subjects=24, slices_per_subject=4, size=size, seed=seed)
    rows = ("healthy",) + LESION_TYPES
    fig, axes = plt.subplots(len(rows) * 2, n_each, figsize=(2 * n_each, 4 * len(rows)))
    for r, cls in enumerate(rows):
        idx = [i for i, c in enumerate(a["classes"]) if c == cls][:: 3][:n_each]
        for j, i in enumerate(idx):
            ax = axes[2 * r, j]
            ax.imshow(a["images"][i], cmap="gray", vmin=-1, vmax=1)
            ax.set_title(f"{cls} {a['ids'][i]}", fontsize=7)
            ax = axes[2 * r + 1, j]
            ax.imshow(a["images"][i], cmap="gray", vmin=-1, vmax=1)
            if a["masks"][i].any():
                ax.contour(a["masks"][i], levels=[0.5], colors="r", linewidths=0.6)
            ax.set_title("mask", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # python -m anomaly_bench.data.phantom [out.png] [size]
    import sys

    save_preview(sys.argv[1] if len(sys.argv) > 1 else "/tmp/phantom_preview.png",
                 size=int(sys.argv[2]) if len(sys.argv) > 2 else 64)
