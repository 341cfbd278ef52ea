"""Training-health evidence (issue 20 items 2-3): image-quality measures, the loss-fall measure, the flag rule, the
job record of a deliberately under-trained job and the mark it leaves in every table."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from anomaly_bench.evaluation.health import (
    FLAG_LOSS,
    FLAG_MAE,
    MAX_LOSS_FALL,
    MAX_MAE_RATIO,
    critic_gap,
    health_flags,
    job_health,
    loss_fall,
    mae,
    psnr,
    ssim,
)


def _skimage_ssim(a, b):
    metrics = pytest.importorskip("skimage.metrics")
    return metrics.structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)


@pytest.mark.parametrize("kind", ["random", "smooth", "odd_size"])
def test_ssim_matches_skimage(kind):
    rng = np.random.default_rng({"random": 0, "smooth": 1, "odd_size": 2}[kind])
    shape = (37, 52) if kind == "odd_size" else (64, 64)
    a = rng.uniform(-1, 1, shape)
    if kind == "smooth":
        a = gaussian_filter(rng.normal(size=shape), 4)
        a /= np.abs(a).max()
    b = np.clip(a + rng.normal(0, 0.3, shape), -1, 1)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-6)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-9)
    # a batch is the mean of its images' values
    assert ssim(np.stack([a, a]), np.stack([b, a])) == pytest.approx((_skimage_ssim(a, b) + 1) / 2, abs=1e-6)


def test_mae_and_psnr_by_hand():
    x = np.zeros((2, 4, 4))
    y = np.full((2, 4, 4), 0.5)
    assert mae(x, y) == pytest.approx(0.5)
    assert psnr(x, y) == pytest.approx(10 * math.log10(4 / 0.25))  # data range 2: peak² = 4
    assert psnr(x[:, None], x[:, None]) == pytest.approx(10 * math.log10(4 / 1e-10))  # floored MSE, not inf


def test_loss_fall_on_synthetic_curves():
    it = np.arange(1, 201) * 10
    assert loss_fall(it, np.full(200, 0.3)) == pytest.approx(0.0, abs=1e-9)
    decay = np.exp(-it / 1000)  # still falling fast at the end
    fall = loss_fall(it, decay)
    assert fall > MAX_LOSS_FALL and health_flags(None, fall) == [FLAG_LOSS]
    noisy = 1 + np.random.default_rng(0).normal(0, 0.05, 200)
    assert abs(loss_fall(it, noisy)) < MAX_LOSS_FALL and health_flags(None, loss_fall(it, noisy)) == []
    converged = 0.1 + np.exp(-it / 50)  # fell early, flat over the last 20 %
    assert loss_fall(it, converged) < 0.01
    # a straight line from 2 to 1: over the last 20 % of the range it falls 0.2 of a mean of 1.1
    line = np.linspace(2, 1, 201)
    assert loss_fall(np.arange(201), line) == pytest.approx(0.2 / 1.1, rel=1e-6)
    assert loss_fall([1, 2], [1.0, 0.5]) is None  # too few rows to say


def test_mae_ratio_rule():
    assert health_flags(MAX_MAE_RATIO - 0.01, 0.0) == []
    assert health_flags(MAX_MAE_RATIO, 0.0) == [FLAG_MAE]  # "not below" 0.7 x the mean-image MAE
    assert health_flags(1.5, 0.5) == [FLAG_MAE, FLAG_LOSS]
    assert health_flags(None, None) == [] and health_flags(float("nan"), None) == []


def _losses(n=50, **cols):
    return pd.DataFrame({"iteration": np.arange(1, n + 1) * 10, **cols})


def test_job_health_record():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (6, 1, 32, 32))
    mean_image = images.mean(0)
    flat = np.ones(50)
    good = job_health(images, images[:, 0] + 0.01, mean_image, _losses(recon=flat), health_loss="recon")
    assert good["under_trained"] is False and good["flags"] == [] and good["mae_ratio"] < 0.1
    assert good["final"]["psnr"] > good["mean_image"]["psnr"] and good["loss_fall_last20"] == pytest.approx(0)
    grey = np.zeros((6, 32, 32))  # a flat grey reconstruction: no better than the mean image
    bad = job_health(images, grey, mean_image, _losses(recon=flat), health_loss="recon")
    assert bad["under_trained"] is True and bad["flags"] == [FLAG_MAE] and bad["mae_ratio"] >= MAX_MAE_RATIO
    # no reconstructions: judged on the loss rule alone
    norec = job_health(images, None, mean_image, _losses(recon=np.linspace(2, 1, 50)), health_loss="recon")
    assert norec["final"] is None and norec["mae_ratio"] is None and norec["flags"] == [FLAG_LOSS]
    # no loss log: not iterative, no flag
    assert job_health(images, None, mean_image, None) == {"not_iterative": True}
    # the first health_loss column the log has; rows of one stage only; AnomalyPro's extra columns
    two_stage = _losses(stage=[1.0] * 25 + [2.0] * 25, enc_loss=[0.0] * 25 + [1.0] * 25,
                        wdist=[0.5] * 25 + [0.0] * 25, g_id=np.full(50, 0.25))
    h = job_health(images, None, mean_image, two_stage, health_loss=("g_rec", "enc_loss"),
                   health_rows={"stage": 2.0}, critic_rows={"stage": 1.0})
    assert h["main_loss"] == "enc_loss" and h["loss_fall_last20"] == pytest.approx(0.0)
    assert h["critic_gap"] == pytest.approx(0.5) and h["g_id"] == pytest.approx(0.25)
    json.dumps(h, allow_nan=False)  # plain JSON


def test_critic_gap_from_d_real_and_d_fake():
    df = _losses(d_real=np.linspace(0, 1, 50), d_fake=np.zeros(50))
    assert critic_gap(df) == pytest.approx(np.linspace(0, 1, 50)[-10:].mean())
    assert critic_gap(_losses(recon=np.ones(50))) is None
