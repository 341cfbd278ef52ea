"""Training-health evidence of one job (issue 20): is the model trained, or is it still a flat grey guess?

Pure functions, no files: the harness (:mod:`anomaly_bench.harness.job_runner`) calls :func:`job_health` with
the held-out healthy images, the final model's reconstructions of them, the mean training image and the loss log.

* Image quality of ``[-1, 1]`` images (``data range`` 2): :func:`mae`, :func:`psnr` (per image, then the mean)
  and :func:`ssim` (Wang et al. 2004: 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, population
  (co)variances, the mean over the window positions that fit in the image; the same number as
  ``skimage.metrics.structural_similarity(x, y, data_range=2, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``).
* The **baseline** is the mean training image (of the healthy set B the job trained on) predicted for every
  held-out image: a model whose reconstructions are no better than that has learnt nothing image-specific.
* :func:`loss_fall`: the relative fall of a loss over the last 20 % of its logged iterations: a least-squares line
  through the logged values in that window, fall = −slope × window span / |mean value in the window| (positive:
  still falling).

Flag rule (:func:`health_flags`): a job is **under-trained** when its held-out healthy reconstruction MAE is not
below :data:`MAX_MAE_RATIO` (0.7) × the mean-image MAE, or when its main loss still falls by more than
:data:`MAX_LOSS_FALL` (10 %) over the last 20 % of training. A method without reconstructions is judged on the loss
rule alone; one without a loss log (PaDiM, PatchCore: no training loop) is not judged. A method whose
reconstructions are not trained to be pixel-faithful sets ``AnomalyMethod.health_judge_mae = False`` (ALAD: a BiGAN's
G(E(x)) is a semantic, not a pixel, reconstruction; the authors judge training by its losses): its MAE ratio is
recorded (``mae_judged: false``) and shown, and it is judged on the loss rule.

The held-out curve (:func:`apply_heldout_rule`, applied by the harness once the checkpoints are scored): where a
method has reconstructions and at least 3 checkpoints, the held-out healthy MAE per checkpoint (``selection.csv``) says
whether the model still improves on images it never trained on. Its **gain** over the last 20 % is how far the best
MAE of the checkpoints in that window lies below the best MAE of all earlier checkpoints, relative to the latter
(0 when the window reaches no new best). A gain above :data:`MAX_HELDOUT_GAIN` (5 %) flags the job
(:data:`FLAG_HELDOUT`): it was still reaching new bests when training stopped. Otherwise a training loss that still
falls is the network memorising its training set, not under-training, and :data:`FLAG_LOSS` is lifted (the record
keeps ``loss_fall_last20`` and says ``loss_rule: "lifted: no held-out gain"``). A new best, not a slope, because GAN
reconstructions fluctuate from checkpoint to checkpoint: a slope through the last three points reads a recovery from
a bump as progress. Measured cases (``cpu`` profile, brain_tumor_mri, seed 0): GANomaly's g_con still fell 11.8 % over
its last 20 % while its held-out MAE stayed at 0.149-0.153 over its last 40 % (gain 1 %); ALOCC's held-out MAE reached
0.121 at iteration 450 of 900 and moved between 0.125 and 0.142 after it (gain 0, though a 3-point slope falls 6 %).

Which loss is "main" is a class attribute of the method (``AnomalyMethod.health_loss``: its reconstruction or
translation term in losses.csv, e.g. ``recon`` for the autoencoder, ``g_con`` for GANomaly, ``enc_loss`` for
f-AnoGAN; a tuple: the first column the log has; None: no loss check; plugins may set it).
``health_loss_rows`` / ``health_critic_rows`` (column -> value) keep the loss-log rows of the stage that counts
(f-AnoGAN: ``stage`` 2 for its encoder loss, ``stage`` 1 for its critic's ``wdist``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: under-trained when the final healthy reconstruction MAE / mean-training-image MAE is not below this
MAX_MAE_RATIO = 0.7
#: under-trained when the main loss still falls by more than this fraction over the last :data:`WINDOW` of training
MAX_LOSS_FALL = 0.10
#: under-trained when the best held-out healthy MAE of the checkpoints in the last :data:`WINDOW` of training is more
#: than this fraction below the best of the earlier ones (see :func:`apply_heldout_rule`)
MAX_HELDOUT_GAIN = 0.05
#: the fraction of the logged iterations the loss-fall and critic-gap windows cover (the last 20 %)
WINDOW = 0.2
#: the flag names recorded in ``job.json["health"]["flags"]``
FLAG_MAE = f"mae_ratio>={MAX_MAE_RATIO:g}"
FLAG_LOSS = f"loss_fall>{MAX_LOSS_FALL:g}"
FLAG_HELDOUT = f"heldout_mae_gain>{MAX_HELDOUT_GAIN:g}"
#: loss-log columns reported as their mean over the last 20 % when a method logs them (MedAI AnomalyPro's masks on
#: A and B, its identity term)
EXTRA_COLUMNS = ("mask_a_mean", "mask_b_mean", "g_id")
DATA_RANGE = 2.0
SSIM_SIGMA, SSIM_RADIUS, SSIM_K1, SSIM_K2 = 1.5, 5, 0.01, 0.03
#: float64 bytes per working array of :func:`image_quality` (1,024 images at 64 px, 64 at 256 px)
QUALITY_CHUNK_BYTES = 32 * 2**20
MIN_PSNR_MSE = 1e-10  # a perfect reconstruction gives 106 dB, not infinity (job.json is plain JSON)


def _as_images(x: Any) -> np.ndarray:
    """``(N, H, W)`` float64 from ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` arrays or tensors."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    a = a.astype(np.float64)
    if a.ndim == 4:
        a = a[:, 0]
    return a[None] if a.ndim == 2 else a


def mae(x: Any, y: Any) -> float:
    """Mean absolute error over every pixel of every image."""
    return float(np.abs(_as_images(x) - _as_images(y)).mean())


def psnr(x: Any, y: Any, data_range: float = DATA_RANGE) -> float:
    """Mean over images of 10·log10(data_range² / MSE) (dB; the MSE floored at 1e-10)."""
    a, b = _as_images(x), _as_images(y)
    mse = np.maximum(((a - b) ** 2).reshape(len(a), -1).mean(1), MIN_PSNR_MSE)
    return float(np.mean(10 * np.log10(data_range**2 / mse)))


def _gaussian_kernel() -> torch.Tensor:
    t = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    return k / k.sum()


def ssim_per_image(x: Any, y: Any, data_range: float = DATA_RANGE) -> np.ndarray:
    """SSIM of each image pair (see the module docstring); NaN for images smaller than the 11×11 window."""
    a, b = (torch.from_numpy(_as_images(v))[:, None] for v in (x, y))
    if a.shape[-1] < 2 * SSIM_RADIUS + 1 or a.shape[-2] < 2 * SSIM_RADIUS + 1:
        return np.full(len(a), np.nan)
    k = _gaussian_kernel()
    kh, kw = k.view(1, 1, -1, 1), k.view(1, 1, 1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid positions only
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(t, kh), kw)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).numpy()


def ssim(x: Any, y: Any, data_range: float = DATA_RANGE) -> float:
    """Mean SSIM over the image pairs."""
    return float(np.mean(ssim_per_image(x, y, data_range)))


def image_quality(recon: Any, images: Any, chunk: int | None = None) -> dict[str, float]:
    """``{mae, psnr, ssim}`` of reconstructions against their inputs. More than ``chunk`` images (default:
    ``QUALITY_CHUNK_BYTES`` of float64 per working array; SSIM holds about a dozen) are compared ``chunk`` at a
    time, and the per-chunk means are averaged weighted by their image counts (every image has the same pixel
    count)."""
    shape = _shape(images)
    n = shape[0]
    chunk = chunk or max(1, QUALITY_CHUNK_BYTES // (8 * int(np.prod(shape[1:]))))
    if n <= chunk:
        return {"mae": mae(recon, images), "psnr": psnr(recon, images), "ssim": ssim(recon, images)}
    parts = [(min(chunk, n - lo), image_quality(recon[lo:lo + chunk], images[lo:lo + chunk], chunk))
             for lo in range(0, n, chunk)]
    return {k: float(sum(w * q[k] for w, q in parts) / n) for k in ("mae", "psnr", "ssim")}


def _shape(x: Any) -> tuple[int, ...]:
    """The ``(N, H, W)`` shape :func:`_as_images` would give, without converting ``x``."""
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    if len(shape) == 4:
        shape = (shape[0], *shape[2:])
    return (1, *shape) if len(shape) == 2 else shape


def nan_quality() -> dict[str, float]:
    return {"mae": math.nan, "psnr": math.nan, "ssim": math.nan}


# ------------------------------------------------------------------------------------------------ loss log
def window(iterations: Any, frac: float = WINDOW, min_points: int = 3) -> tuple[np.ndarray, float]:
    """(mask of the rows in the last ``frac`` of the logged iteration range, that window's span in iterations).
    The span is ``frac`` × (last − first logged iteration); when fewer than ``min_points`` rows fall in it, the last
    ``min_points`` rows are used (the span stays ``frac`` of the range, so the fall is still per 20 % of training)."""
    it = np.asarray(iterations, dtype=np.float64)
    if len(it) == 0:
        return np.zeros(0, dtype=bool), 0.0
    span = frac * (it.max() - it.min())
    mask = it >= it.max() - span
    if mask.sum() < min_points:
        mask = np.zeros(len(it), dtype=bool)
        mask[np.argsort(it, kind="stable")[-min_points:]] = True
    return mask, float(span)


def loss_fall(iterations: Any, values: Any, frac: float = WINDOW) -> float | None:
    """Relative fall of a loss over the last ``frac`` of its logged iterations: fit a least-squares line to the
    values in that window (:func:`window`); fall = −slope × span / |mean value in the window|. Positive: still
    falling; ≈ 0: flat. None with fewer than 3 finite rows or a zero mean."""
    it, v = np.asarray(iterations, dtype=np.float64), np.asarray(values, dtype=np.float64)
    ok = np.isfinite(it) & np.isfinite(v)
    it, v = it[ok], v[ok]
    if len(it) < 3 or it.max() == it.min():
        return None
    mask, span = window(it, frac)
    x, y = it[mask], v[mask]
    level = abs(float(y.mean()))
    if len(x) < 2 or x.max() == x.min() or level == 0:
        return None
    slope = float(np.polyfit(x, y, 1)[0])
    return -slope * span / level


def loss_rows(losses, where: dict[str, float] | None):
    """The loss-log rows matching ``where`` (column -> value), sorted by iteration."""
    df = losses
    for col, val in (where or {}).items():
        if col in df.columns:
            df = df[np.isclose(df[col].astype(float), float(val))]
    return df.sort_values("iteration", kind="stable")


def main_loss_column(losses, health_loss: str | tuple[str, ...] | None) -> str | None:
    """The first of the method's ``health_loss`` name(s) that the loss log has (None: no loss check)."""
    names = (health_loss,) if isinstance(health_loss, str) else tuple(health_loss or ())
    return next((n for n in names if losses is not None and n in losses.columns), None)


def critic_gap_series(df):
    """Per logged row, ``d_real − d_fake`` (a WGAN critic's gap) or the logged ``wdist``; None when neither."""
    if {"d_real", "d_fake"} <= set(df.columns):
        return df["d_real"].astype(float) - df["d_fake"].astype(float)
    if "wdist" in df.columns:
        return df["wdist"].astype(float)
    return None


def critic_gap(losses, where: dict[str, float] | None = None) -> float | None:
    """Mean of ``d_real − d_fake`` (or of ``wdist``) over the last 20 % of the logged rows (``where``: those of
    the critic's stage); None when the method logs neither."""
    if losses is None:
        return None
    df = loss_rows(losses, where)
    gap = critic_gap_series(df)
    if gap is None or len(df) == 0:
        return None
    mask, _ = window(df["iteration"].to_numpy())
    return float(np.nanmean(gap.to_numpy()[mask]))


def health_flags(mae_ratio: float | None, fall: float | None) -> list[str]:
    """Which rule says under-trained: :data:`FLAG_MAE` when ``mae_ratio`` ≥ :data:`MAX_MAE_RATIO`,
    :data:`FLAG_LOSS` when the main loss still falls by more than :data:`MAX_LOSS_FALL`."""
    flags = []
    if mae_ratio is not None and np.isfinite(mae_ratio) and mae_ratio >= MAX_MAE_RATIO:
        flags.append(FLAG_MAE)
    if fall is not None and np.isfinite(fall) and fall > MAX_LOSS_FALL:
        flags.append(FLAG_LOSS)
    return flags


def heldout_gain(iterations: Any, values: Any, frac: float = WINDOW) -> float | None:
    """(best value before the last ``frac`` of the iterations − best value inside it) / best before, floored at 0:
    how much a lower-is-better curve still improved on its earlier best at the end (:func:`window` picks the rows;
    at least 3 finite rows and one before the window, else None)."""
    it, v = np.asarray(iterations, dtype=np.float64), np.asarray(values, dtype=np.float64)
    ok = np.isfinite(it) & np.isfinite(v)
    it, v = it[ok], v[ok]
    if len(it) < 3:
        return None
    order = np.argsort(it, kind="stable")
    it, v = it[order], v[order]
    mask, _ = window(it, frac)
    if mask.all() or not mask.any():
        return None
    before, last = float(v[~mask].min()), float(v[mask].min())
    return max(0.0, (before - last) / before) if before > 0 else None


def apply_heldout_rule(health: dict[str, Any] | None, selection) -> dict[str, Any] | None:
    """``health`` (a :func:`job_health` record) refined by the held-out curve of ``selection`` (a DataFrame with
    ``iteration`` and ``healthy_mae`` per checkpoint; None: no checkpoints). Returns the record, updated in place:
    ``heldout_mae_gain_last20`` (:func:`heldout_gain`); :data:`FLAG_HELDOUT` when it exceeds :data:`MAX_HELDOUT_GAIN`;
    :data:`FLAG_LOSS` lifted when it does not. Records without reconstructions, with an unjudged MAE (``mae_judged:
    false``) or with fewer than 3 finite checkpoints are returned unchanged."""
    if not isinstance(health, dict) or health.get("not_iterative") or health.get("mae_judged") is False:
        return health
    if selection is None or "healthy_mae" not in getattr(selection, "columns", ()) or health.get("final") is None:
        return health
    gain = heldout_gain(selection["iteration"].to_numpy(), selection["healthy_mae"].to_numpy())
    if gain is None:
        return health
    flags = [f for f in health.get("flags") or [] if f != FLAG_HELDOUT]
    if gain > MAX_HELDOUT_GAIN:
        flags.append(FLAG_HELDOUT)
    elif FLAG_LOSS in flags:
        flags.remove(FLAG_LOSS)
        health["loss_rule"] = "lifted: no held-out gain"
    health.update(heldout_mae_gain_last20=_clean(gain), flags=flags, under_trained=bool(flags))
    health.setdefault("rule", {})["max_heldout_gain"] = MAX_HELDOUT_GAIN
    return health


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def job_health(images: Any, recon: Any, mean_image: Any, losses, *, health_loss=None,
               health_rows: dict[str, float] | None = None,
               critic_rows: dict[str, float] | None = None, judge_mae: bool = True) -> dict[str, Any]:
    """``job.json["health"]`` of one job: ``images`` the held-out healthy images, ``recon`` the final model's
    reconstructions of them (None: the method has none), ``mean_image`` the mean training image, ``losses`` the
    loss log (a DataFrame with ``iteration``; None: no training loop → ``{"not_iterative": True}``).
    ``health_loss``/``health_rows``/``critic_rows``: the method's main loss column(s) and the rows that count.
    ``judge_mae`` False (``AnomalyMethod.health_judge_mae``): the MAE ratio is recorded but not flagged."""
    if losses is None or "iteration" not in losses.columns or len(losses) == 0:
        return {"not_iterative": True}
    imgs = images if isinstance(images, (torch.Tensor, np.ndarray)) else np.asarray(images)
    shape = _shape(imgs)
    base = image_quality(np.broadcast_to(_as_images(mean_image)[0], shape), imgs) if shape[0] else None
    if recon is not None and _shape(recon) != shape:
        recon = None  # reconstructions at another size (a plugin's choice) are not compared: loss rule only
    final = image_quality(recon, imgs) if recon is not None and shape[0] else None
    ratio = None
    if final is not None and base is not None and base["mae"] > 0:
        ratio = final["mae"] / base["mae"]
    name = main_loss_column(losses, health_loss)
    fall = None
    if name is not None:
        rows = loss_rows(losses, health_rows)
        fall = loss_fall(rows["iteration"].to_numpy(), rows[name].to_numpy())
    flags = health_flags(ratio if judge_mae else None, fall)
    out: dict[str, Any] = {
        "final": None if final is None else {k: _clean(v) for k, v in final.items()},
        "mean_image": None if base is None else {k: _clean(v) for k, v in base.items()},
        "mae_ratio": _clean(ratio), "main_loss": name, "loss_fall_last20": _clean(fall),
        "critic_gap": _clean(critic_gap(losses, critic_rows)),
    }
    if not judge_mae:
        out["mae_judged"] = False
    last = window(losses["iteration"].to_numpy())[0]
    for col in EXTRA_COLUMNS:
        if col in losses.columns:
            out[col] = _clean(float(np.nanmean(losses[col].astype(float).to_numpy()[last])))
    out.update(flags=flags, under_trained=bool(flags),
               rule={"max_mae_ratio": MAX_MAE_RATIO, "max_loss_fall": MAX_LOSS_FALL, "window": WINDOW},
               loss_rows=dict(health_rows or {}), critic_rows=dict(critic_rows or {}))
    return out
