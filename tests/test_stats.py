"""Bootstrap CIs, DeLong's test and Holm: against independent slow implementations and known-truth simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from anomaly_bench.evaluation.stats import (
    _weighted_auc,
    bootstrap_auc_ci,
    bootstrap_aucs,
    bootstrap_mean_auc_ci,
    bootstrap_p_value,
    delong_components,
    delong_test,
    delong_variance,
    holm,
    paired_bootstrap_aucs,
    paired_mean_auc_test,
    seed_draws,
)


# ----------------------------------------------------------------------------- independent slow DeLong
def _psi(x, y):
    return 1.0 if x > y else (0.5 if x == y else 0.0)


def _slow_delong(labels, score_sets):
    """DeLong et al. 1988 from the definition: O(m n) structural components V10, V01 per score set."""
    labels = np.asarray(labels)
    k = len(score_sets)
    v10, v01, aucs = [], [], []
    for s in score_sets:
        s = np.asarray(s, dtype=float)
        pos, neg = s[labels == 1], s[labels == 0]
        psi = np.array([[_psi(x, y) for y in neg] for x in pos])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    m, n = len(v10[0]), len(v01[0])
    cov = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            s10 = np.sum((v10[a] - aucs[a]) * (v10[b] - aucs[b])) / (m - 1)
            s01 = np.sum((v01[a] - aucs[a]) * (v01[b] - aucs[b])) / (n - 1)
            cov[a, b] = s10 / m + s01 / n
    return np.array(aucs), cov


@pytest.mark.parametrize("rounding", [None, 1])  # rounding to 1 decimal creates many ties
def test_fast_delong_equals_slow_definition(rounding):
    rng = np.random.default_rng(11)
    y = np.r_[np.ones(37), np.zeros(52)].astype(int)
    a = rng.normal(size=len(y)) + 1.0 * y
    b = 0.6 * a + rng.normal(size=len(y)) * 0.8 + 0.3 * y
    if rounding is not None:
        a, b = np.round(a, rounding), np.round(b, rounding)
    aucs, cov = delong_components(y, np.vstack([a, b]))
    aucs_ref, cov_ref = _slow_delong(y, [a, b])
    assert aucs == pytest.approx(aucs_ref, abs=1e-12)
    assert cov == pytest.approx(cov_ref, abs=1e-12)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a))
    auc1, var1 = delong_variance(y, a)
    assert (auc1, var1) == pytest.approx((aucs_ref[0], cov_ref[0, 0]), abs=1e-12)
    auc_a, auc_b, z, p = delong_test(y, a, b)
    z_ref = (aucs_ref[0] - aucs_ref[1]) / math.sqrt(cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1])
    assert z == pytest.approx(z_ref, rel=1e-9)
    assert p == pytest.approx(2 * norm.sf(abs(z_ref)), rel=1e-9)
    assert (auc_a, auc_b) == pytest.approx(tuple(aucs_ref))


def test_delong_hand_case():
    # positives 0.9, 0.7, 0.3; negatives 0.1, 0.4, 0.35, 0.8. psi rows (per positive): [1,1,1,1], [1,1,1,0],
    # [1,0,0,0] -> V10 = 1, .75, .25 (mean 2/3); V01 per negative: 1, 2/3, 2/3, 1/3 (mean 2/3).
    # S10 = var(1, .75, .25) = 0.145833..; S01 = var(1, 2/3, 2/3, 1/3) = 0.0740740..; var = S10/3 + S01/4.
    y = [0, 0, 0, 0, 1, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.9, 0.7, 0.3]
    auc, var = delong_variance(y, s)
    assert auc == pytest.approx(2 / 3)
    s10 = np.var([1, 0.75, 0.25], ddof=1)
    s01 = np.var([1, 2 / 3, 2 / 3, 1 / 3], ddof=1)
    assert s10 == pytest.approx(0.1458333333) and s01 == pytest.approx(0.0740740741)
    assert var == pytest.approx(s10 / 3 + s01 / 4)


def test_delong_identical_and_nonfinite():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    s = rng.normal(size=100) + y
    assert delong_test(y, s, s)[2:] == (0.0, 1.0)
    assert delong_test(y, s, 3 * s + 1)[3] == 1.0  # same ranking, different scale
    assert all(math.isnan(v) for v in delong_test(y, np.r_[s[:-1], np.nan], s))
    with pytest.raises(ValueError, match="only one class"):
        delong_test(np.zeros(5), np.arange(5), np.arange(5))
    with pytest.raises(ValueError, match="same images"):
        delong_test(y, s, s[:-1])


def test_delong_size_under_null_and_power():
    """Two noisy copies of one latent score have equal AUCs: the test must reject about 5 % of the time."""
    rng = np.random.default_rng(42)
    rej, rej_alt = 0, 0
    n_sim = 300
    y = np.r_[np.ones(60), np.zeros(60)].astype(int)
    for _ in range(n_sim):
        latent = rng.normal(size=120) + 1.2 * y
        a = latent + rng.normal(size=120) * 0.7
        b = latent + rng.normal(size=120) * 0.7
        rej += delong_test(y, a, b)[3] < 0.05
        c = latent + rng.normal(size=120) * 6.0  # nearly pure noise: AUC about 0.56 against about 0.76
        rej_alt += delong_test(y, a, c)[3] < 0.05
    assert 0.02 <= rej / n_sim <= 0.09
    assert rej_alt / n_sim > 0.7


# ----------------------------------------------------------------------------- bootstrap
def test_weighted_auc_equals_sklearn_on_repeated_data():
    rng = np.random.default_rng(1)
    s = np.round(rng.normal(size=40), 1)  # ties
    y = (rng.random(40) < 0.4).astype(int)
    y[:2] = [0, 1]
    w = rng.integers(0, 4, size=(5, 40)).astype(float)
    w[:, :2] = 1
    order = np.argsort(s, kind="stable")
    ss, ys, ws = s[order], y[order].astype(bool), w[:, order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    got = _weighted_auc(ws * ys, ws * ~ys, starts)
    for b in range(5):
        rep = w[b].astype(int)
        assert got[b] == pytest.approx(roc_auc_score(np.repeat(y, rep), np.repeat(s, rep)))


def test_bootstrap_is_stratified_and_deterministic():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(30), np.zeros(70)].astype(int)
    s = rng.normal(size=100) + y
    a = bootstrap_auc_ci(y, s, n_boot=300, seed=7)
    assert a == bootstrap_auc_ci(y, s, n_boot=300, seed=7)
    assert a != bootstrap_auc_ci(y, s, n_boot=300, seed=8)
    auc, lo, hi = a
    assert auc == pytest.approx(roc_auc_score(y, s)) and lo < auc < hi
    # stratified: every replicate has both classes, so every replicate AUC is finite
    reps = bootstrap_aucs(y, s, n_boot=500, seed=0)
    assert np.all(np.isfinite(reps)) and 0.4 < reps.std() * 10 < 1.5
    assert all(math.isnan(v) for v in bootstrap_auc_ci(y, np.r_[s[:-1], np.inf]))
    with pytest.raises(ValueError, match="only one class"):
        bootstrap_auc_ci(np.ones(5), np.arange(5.0))


def test_bootstrap_coverage_binormal():
    """95 % CIs cover the true AUC Phi(d / sqrt 2) of binormal scores at about the nominal rate."""
    d = 1.0
    true_auc = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(123)
    y = np.r_[np.ones(80), np.zeros(80)].astype(int)
    hits, n_rep = 0, 200
    for r in range(n_rep):
        s = rng.normal(size=160) + d * y
        _, lo, hi = bootstrap_auc_ci(y, s, n_boot=300, seed=r)
        hits += lo <= true_auc <= hi
    assert 0.88 <= hits / n_rep <= 0.99


def test_bootstrap_resamples_images_independently_of_scores():
    """Paired replicates: the resample depends on labels/order/seed only, so AUC(-s) = 1 - AUC(s) per replicate."""
    rng = np.random.default_rng(9)
    y = np.r_[np.ones(25), np.zeros(35)].astype(int)
    s = rng.normal(size=60) + y
    for groups in (None, np.arange(60) // 3):
        r1 = bootstrap_aucs(y, s, n_boot=200, seed=3, groups=groups)
        r2 = bootstrap_aucs(y, -s, n_boot=200, seed=3, groups=groups)
        assert r1 + r2 == pytest.approx(np.ones(200))


def test_bootstrap_mean_auc_ci():
    rng = np.random.default_rng(6)
    y = np.r_[np.ones(40), np.zeros(40)].astype(int)
    s1, s2 = rng.normal(size=80) + y, rng.normal(size=80) + 0.5 * y
    assert bootstrap_mean_auc_ci([y], [s1], n_boot=300, seed=1) == bootstrap_auc_ci(y, s1, n_boot=300, seed=1)
    assert bootstrap_mean_auc_ci([y, y], [s1, 5 * s1], n_boot=300, seed=1) == pytest.approx(
        bootstrap_auc_ci(y, s1, n_boot=300, seed=1))
    mean, lo, hi = bootstrap_mean_auc_ci([y, y], [s1, s2], n_boot=300, seed=1)
    assert mean == pytest.approx((roc_auc_score(y, s1) + roc_auc_score(y, s2)) / 2) and lo < mean < hi
    assert all(math.isnan(v) for v in bootstrap_mean_auc_ci([y, y], [s1, np.r_[s2[:-1], np.nan]]))


def test_cluster_bootstrap_widens_for_correlated_slices():
    """Five identical-ish slices per subject carry one subject's information: resampling subjects must give a
    CI about sqrt(5) wider than treating slices as independent."""
    rng = np.random.default_rng(4)
    n_subj, k = 60, 5
    subj_y = np.r_[np.ones(n_subj // 2), np.zeros(n_subj // 2)].astype(int)
    subj_s = rng.normal(size=n_subj) + subj_y
    y = np.repeat(subj_y, k)
    s = np.repeat(subj_s, k) + rng.normal(size=n_subj * k) * 0.01
    groups = np.repeat(np.arange(n_subj), k)
    _, lo_i, hi_i = bootstrap_auc_ci(y, s, n_boot=600, seed=0)
    _, lo_g, hi_g = bootstrap_auc_ci(y, s, n_boot=600, seed=0, groups=groups)
    assert (hi_g - lo_g) / (hi_i - lo_i) > 1.6


def test_cluster_bootstrap_subjects_with_mixed_labels():
    # subject "a" has a healthy and a diseased slice: it is resampled as a diseased subject with both slices
    y = np.array([0, 1, 0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.8, 0.2, 0.3, 0.9, 0.7, 0.4, 0.6])
    g = np.array(["a", "a", "b", "c", "d", "e", "f", "g"])
    reps = bootstrap_aucs(y, s, n_boot=200, seed=0, groups=g)
    assert np.all(np.isfinite(reps)) and np.all((reps >= 0) & (reps <= 1))


# ----------------------------------------------------------------------------- Holm
def test_holm_hand_case():
    # sorted 0.01, 0.03, 0.04, 0.5 (m = 4): 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    got = holm([0.01, 0.04, 0.03, np.nan, 0.5])
    assert got[[0, 1, 2, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(got[3])
    assert holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]).size == 0 and math.isnan(holm([np.nan])[0])


def test_holm_is_at_least_raw_and_controls_fwer():
    rng = np.random.default_rng(0)
    fam_err = 0
    for _ in range(400):
        p = rng.random(6)  # all nulls true
        adj = holm(p)
        assert np.all(adj >= p - 1e-15)
        fam_err += np.any(adj < 0.05)
    assert fam_err / 400 <= 0.08


# ----------------------------------------------------------------------------- over seeds
def _seed_run(rng, n, shift):
    """Labels and scores of one seed's test set (n images, half positive) whose AUC is about Phi(shift/sqrt 2)."""
    y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(int)
    return y, rng.normal(size=n) + shift * y


def test_mean_auc_ci_covers_disagreeing_seeds():
    """Seeds whose AUCs are about 0.25, 0.72, 0.83: the interval must span the seed spread, not only the
    test-set sampling of their mean (the old images-only interval was about mean +- 0.03 here)."""
    rng = np.random.default_rng(11)
    runs = [_seed_run(rng, 300, d) for d in (-0.95, 0.82, 1.35)]
    aucs = [roc_auc_score(y, s) for y, s in runs]
    assert aucs[0] < 0.3 and 0.68 < aucs[1] < 0.76 and 0.79 < aucs[2] < 0.87
    mean, lo, hi = bootstrap_mean_auc_ci([y for y, _ in runs], [s for _, s in runs], n_boot=1000, seed=0)
    assert mean == pytest.approx(np.mean(aucs))
    assert lo < 0.5 and hi > 0.75
    assert bootstrap_mean_auc_ci([y for y, _ in runs], [s for _, s in runs], n_boot=1000, seed=0) == (mean, lo, hi)


def test_mean_auc_ci_identical_seeds_is_images_only():
    rng = np.random.default_rng(12)
    y, s = _seed_run(rng, 120, 1.0)
    groups = np.arange(120) // 2
    for g in (None, groups):
        want = bootstrap_auc_ci(y, s, n_boot=400, seed=5, groups=g)
        got = bootstrap_mean_auc_ci([y, y, y], [s, s, s], n_boot=400, seed=5, groups_list=[g, g, g])
        assert got == pytest.approx(want, abs=1e-12)


def test_seed_draws_deterministic_and_with_replacement():
    d = seed_draws(3, 2000, seed=4)
    assert np.array_equal(d, seed_draws(3, 2000, seed=4)) and not np.array_equal(d, seed_draws(3, 2000, seed=5))
    assert d.shape == (2000, 3) and set(np.unique(d)) == {0, 1, 2}
    assert np.mean([len(set(r)) < 3 for r in d]) > 0.7  # 1 - 3!/27 = 0.78 of replicates repeat a seed
    assert np.all(seed_draws(1, 10) == 0)


def test_paired_mean_auc_test_uses_every_seed():
    """Seed 0: the two methods tie (same scores); seeds 1 and 2: a is far better. A first-seed test says p = 1;
    over all seeds p is small. All seeds tying gives p = 1."""
    rng = np.random.default_rng(13)
    ys, a, b = [], [], []
    for seed in range(3):
        y, base = _seed_run(rng, 200, 0.3)
        ys.append(y)
        b.append(base)
        a.append(base if seed == 0 else base + 3.0 * y)
    diff, p = paired_mean_auc_test(ys, a, b, n_boot=5000, seed=0)
    want = np.mean([roc_auc_score(y, sa) - roc_auc_score(y, sb) for y, sa, sb in zip(ys, a, b)])
    assert diff == pytest.approx(want) and diff > 0.2
    assert p < 0.05 and p == pytest.approx(1 / 27, abs=0.01)  # only replicates drawing seed 0 thrice give d = 0
    assert delong_test(ys[0], a[0], b[0])[3] == 1.0  # what the old first-seed p column printed
    assert paired_mean_auc_test(ys, b, b, n_boot=500, seed=0) == (0.0, 1.0)
    _, p_flip = paired_mean_auc_test(ys, b, a, n_boot=5000, seed=0)
    assert p_flip == pytest.approx(p)  # two-sided


def test_paired_mean_auc_test_same_image_resample_for_both():
    rng = np.random.default_rng(14)
    y, s = _seed_run(rng, 80, 1.0)
    g = np.arange(80) // 4
    ra, rb = paired_bootstrap_aucs(y, [s, -s], n_boot=300, seed=2, groups=g)
    assert ra + rb == pytest.approx(np.ones(300))
    assert np.array_equal(ra, bootstrap_aucs(y, s, n_boot=300, seed=2, groups=g))


def test_bootstrap_p_value_hand_case():
    assert bootstrap_p_value(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(2 * (1 + 1) / 5)
    assert bootstrap_p_value(np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(2 * (1 + 1) / 5)  # ties count 1/2
    assert bootstrap_p_value(np.zeros(10)) == 1.0
    assert bootstrap_p_value(np.ones(999)) == pytest.approx(2 / 1000)
    assert math.isnan(bootstrap_p_value(np.array([np.nan])))
