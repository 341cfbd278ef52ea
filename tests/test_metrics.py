"""Metrics: against scikit-learn, the official HealthyGAN cutoff rule, and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomaly_bench.evaluation.metrics import (
    IMAGE_METRICS,
    METRICS_COLUMNS,
    compute_metrics,
    image_metrics,
    pixel_metrics,
    select_threshold,
    subject_metrics,
    subject_scores,
)

# Hand case 1: 4 healthy, 3 diseased.
# ROC points (threshold: TP, FP -> J): 0.9: 1,0 -> 1/3; 0.8: 1,1 -> 1/12; 0.7: 2,1 -> 2/3-1/4 = 5/12 (max);
# 0.4: 2,2 -> 1/6; 0.35: 2,3 -> -1/12; 0.3: 3,3 -> 1/4; 0.1: 3,4 -> 0.
# At 0.7: TP 2, FP 1, TN 3, FN 1 -> precision 2/3, recall 2/3, specificity 3/4, F1 2/3, accuracy 5/7.
# AUC: 0.9 beats 4 negatives, 0.7 beats 3, 0.3 beats 1 -> 8/12.
Y1 = [0, 0, 0, 0, 1, 1, 1]
S1 = [0.1, 0.4, 0.35, 0.8, 0.9, 0.7, 0.3]

# Hand case 2 (Youden and equal-error differ): healthy 0.1 0.2 0.3 0.6, diseased 0.5 0.7 0.8 0.9.
# Kept ROC corners (fpr, tpr): 0.7 (0, .75) J=.75; 0.6 (.25, .75) J=.5; 0.5 (.25, 1) J=.75 (tie -> 0.7, the higher).
# Youden at 0.7: TP 3, FP 0, TN 4, FN 1 -> P 1, R .75, Spec 1, F1 6/7, acc 7/8.
# Equal error |tpr - (1 - fpr)|: 0.7 -> .25, 0.6 -> 0 -> threshold 0.6: TP 3, FP 1 -> P = R = Spec = F1 = .75.
Y2 = [0, 0, 0, 0, 1, 1, 1, 1]
S2 = [0.1, 0.2, 0.3, 0.6, 0.5, 0.7, 0.8, 0.9]


def test_hand_case_youden():
    m = image_metrics(Y1, S1)
    assert set(m) == set(IMAGE_METRICS)
    assert m["threshold"] == pytest.approx(0.7)
    assert m["auc"] == pytest.approx(8 / 12)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert (m["n_pos"], m["n_neg"], m["n_nonfinite"]) == (3, 4, 0)


def test_hand_case_youden_tie_and_equal_error():
    y = image_metrics(Y2, S2, "youden")
    assert y["threshold"] == pytest.approx(0.7)  # tie with 0.5 -> the higher threshold
    assert (y["precision"], y["recall"], y["specificity"]) == pytest.approx((1.0, 0.75, 1.0))
    assert y["f1"] == pytest.approx(6 / 7)
    assert y["accuracy"] == pytest.approx(7 / 8)
    e = image_metrics(Y2, S2, "equal_error")
    assert e["threshold"] == pytest.approx(0.6)
    assert (e["precision"], e["recall"], e["specificity"], e["f1"]) == pytest.approx((0.75,) * 4)
    assert e["auc"] == y["auc"] == pytest.approx(15 / 16)


def _official_cutoff(target, predicted) -> float:
    """The official HealthyGAN ``Find_Optimal_Cutoff`` rule, rewritten here independently with pandas."""
    fpr, tpr, thr = roc_curve(target, predicted)
    i = np.arange(len(tpr))
    roc = pd.DataFrame({"tf": pd.Series(tpr - (1 - fpr), index=i), "threshold": pd.Series(thr, index=i)})
    return float(roc.iloc[(roc.tf - 0).abs().argsort()[:1]]["threshold"].iloc[0])


def test_equal_error_matches_official_rule_and_sklearn():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(20, 300))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        s = rng.normal(size=n) + y * rng.uniform(0, 2)
        m = image_metrics(y, s, "equal_error")
        assert m["threshold"] == pytest.approx(_official_cutoff(y, s))
        assert m["auc"] == pytest.approx(roc_auc_score(y, s))
        assert m["ap"] == pytest.approx(average_precision_score(y, s))
        # definitions at that threshold, counted directly
        pred = s >= m["threshold"]
        tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
        assert m["recall"] == pytest.approx(tp / y.sum())
        assert m["specificity"] == pytest.approx(1 - fp / (n - y.sum()))


def test_youden_is_max_of_j():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 500)
    s = rng.normal(size=500) + y
    m = image_metrics(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    assert m["recall"] - (1 - m["specificity"]) == pytest.approx(np.max(tpr - fpr))


def test_fixed_threshold_and_rule_errors():
    m = image_metrics(Y1, S1, 0.35)  # >= 0.35: 0.4, 0.35, 0.8 (FP 3) and 0.9, 0.7 (TP 2)
    assert m["threshold"] == 0.35
    assert m["recall"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(1 / 4)
    assert m["precision"] == pytest.approx(2 / 5)
    m = image_metrics(Y1, S1, 5.0)  # nothing anomalous: precision defined as 0
    assert m["precision"] == 0 and m["recall"] == 0 and m["f1"] == 0 and m["specificity"] == 1
    with pytest.raises(ValueError, match="threshold_rule"):
        image_metrics(Y1, S1, "median")
    with pytest.raises(ValueError, match="0 \\(healthy\\) or 1"):
        image_metrics([0, 2, 1], [1, 2, 3])


def test_inverted_scores_get_a_finite_threshold():
    m = image_metrics([0, 0, 1, 1], [0.9, 0.8, 0.1, 0.2])  # AUC 0: best Youden point calls nothing anomalous
    assert m["auc"] == 0.0
    assert math.isfinite(m["threshold"]) and m["recall"] == 0 and m["specificity"] == 1


def test_single_class_raises_clearly():
    with pytest.raises(ValueError, match="only one class"):
        image_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        select_threshold([1, 1], [0.1, 0.2])


def test_nonfinite_scores_give_nan_and_flag():
    for bad in (np.nan, np.inf, -np.inf):
        m = image_metrics(Y1, [*S1[:-1], bad])
        assert m["n_nonfinite"] == 1
        for k in ("auc", "ap", "threshold", "precision", "recall", "specificity", "f1", "accuracy"):
            assert math.isnan(m[k]), k
        assert (m["n_pos"], m["n_neg"]) == (3, 4)


def test_subject_scores_and_metrics():
    subj = ["a", "a", "b", "b", "b", "c", "d", "d"]
    lab = [0, 1, 0, 0, 0, 0, 1, 1]
    sc = [0.2, 0.6, 0.1, 0.2, 0.3, 0.5, 0.9, 0.7]
    agg = subject_scores(subj, lab, sc)
    assert agg["subject"].tolist() == ["a", "b", "c", "d"]
    assert agg["score"].tolist() == pytest.approx([0.4, 0.2, 0.5, 0.8])
    assert agg["label"].tolist() == [1, 0, 0, 1]  # max of slice labels
    assert agg["n_images"].tolist() == [2, 3, 1, 2]
    m = subject_metrics(subj, lab, sc)
    # positives a 0.4, d 0.8; negatives b 0.2, c 0.5: pairs won 1 + 2 = 3 of 4
    assert m["auc"] == pytest.approx(0.75)
    assert (m["n_pos"], m["n_neg"]) == (2, 2)
    agg = subject_scores(subj, lab, [np.nan, *sc[1:]])
    assert math.isnan(agg["score"].iloc[0]) and not agg["score"].iloc[1:].isna().any()


def _brute_best_dice(s, g):
    best = 0.0
    for t in np.unique(s):
        p = s >= t
        best = max(best, 2 * np.sum(p & g) / (p.sum() + g.sum()))
    return best


def test_pixel_metrics_against_brute_force_and_sklearn():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    masks[1, 4:9, 4:10] = True
    masks[3, 10:14, 2:6] = True
    maps = np.round(rng.random((4, 16, 16)) + 0.8 * masks, 2)  # rounded: ties between pixels
    m = pixel_metrics(maps, masks)
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m["best_dice"] == pytest.approx(_brute_best_dice(maps.ravel(), masks.ravel()))
    assert m["n_pixels"] == 4 * 256 and m["n_anomalous_pixels"] == masks.sum()
    perfect = pixel_metrics(masks.astype(float), masks)
    assert perfect["pixel_auroc"] == 1.0 and perfect["best_dice"] == 1.0


def test_pixel_metrics_subsample_deterministic_and_edge_cases():
    rng = np.random.default_rng(1)
    masks = rng.random((8, 64, 64)) > 0.9
    maps = rng.random((8, 64, 64)) + masks
    full = pixel_metrics(maps, masks, max_pixels=None)
    a = pixel_metrics(maps, masks, max_pixels=5000)
    b = pixel_metrics(maps, masks, max_pixels=5000)
    assert a == b and a["n_pixels"] == 5000
    assert a["pixel_auroc"] == pytest.approx(full["pixel_auroc"], abs=0.03)
    none = pixel_metrics(maps, np.zeros_like(masks))
    assert math.isnan(none["pixel_auroc"]) and math.isnan(none["best_dice"])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    assert math.isnan(pixel_metrics(bad, masks)["pixel_auroc"])
    with pytest.raises(ValueError, match="different numbers of pixels"):
        pixel_metrics(maps[:2], masks)


def _scores_frame(rng, dataset="d1", slices=1, failed=False):
    rows = []
    for method, shift in (("m_good", 1.5), ("m_bad", 0.3)):
        for seed in (0, 1):
            for subj in range(20):
                lab = int(subj % 2)
                for k in range(slices):
                    rows.append({"dataset": dataset, "setting": "inductive", "method": method, "selection": "last",
                                 "seed": seed, "id": f"s{subj}_{k}", "subject": f"s{subj}", "label": lab,
                                 "score": rng.normal() + shift * lab})
    if failed:
        rows.append({"dataset": dataset, "setting": "inductive", "method": "m_failed", "selection": "last",
                     "seed": 0, "id": "", "subject": "", "label": -1, "score": np.nan})
    return pd.DataFrame(rows)


def test_compute_metrics_long_form_matches_image_metrics():
    rng = np.random.default_rng(2)
    df = pd.concat([_scores_frame(rng, "flat"), _scores_frame(rng, "slices", slices=3, failed=True)])
    out = compute_metrics(df, threshold_rule="equal_error")
    assert list(out.columns) == list(METRICS_COLUMNS)
    assert set(out.loc[out.dataset == "flat", "level"]) == {"image"}
    assert set(out.loc[out.dataset == "slices", "level"]) == {"image", "subject"}
    g = df[(df.dataset == "slices") & (df.method == "m_good") & (df.seed == 1)]
    want_img = image_metrics(g.label, g.score, "equal_error")
    want_sub = subject_metrics(g.subject, g.label, g.score, "equal_error")
    got = out[(out.dataset == "slices") & (out.method == "m_good") & (out.seed == 1)]
    for level, want in (("image", want_img), ("subject", want_sub)):
        sel = got[got.level == level].set_index("metric")["value"]
        for k, v in want.items():
            assert sel[k] == pytest.approx(v), (level, k)
    failed = out[out.method == "m_failed"]
    assert len(failed) and failed[failed.metric == "auc"]["value"].isna().all()
    assert (failed[failed.metric == "n_nonfinite"]["value"] > 0).all()


def test_compute_metrics_single_class_names_the_group():
    df = pd.DataFrame({"dataset": "d", "method": "m", "seed": 0, "id": ["a", "b"], "label": [0, 0],
                       "score": [0.1, 0.2]})
    with pytest.raises(ValueError, match="dataset=d.*method=m.*only one class"):
        compute_metrics(df)
