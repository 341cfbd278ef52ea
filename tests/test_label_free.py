"""Issue 19: thresholds without test labels, one checkpoint rule per table, transductive rows of methods that never
saw set A, natural test prevalence, and bootstrap clusters from the split units."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.experiment import parse_experiment
from anomaly_bench.data.phantom import generate_phantom
from anomaly_bench.data.split import SplitConfig, make_split
from anomaly_bench.evaluation.metrics import compute_metrics, label_free_threshold
from anomaly_bench.reporting.inputs import level_arrays, split_by_selection
from anomaly_bench.reporting.table_notes import NOT_ON_A
from anomaly_bench.reporting.tables import build_tables


def _scores(rng, n=60, threshold=0.7, method="m", setting="inductive", selection="last", seed=0, shift=1.0):
    y = np.arange(n) % 2
    return pd.DataFrame({"dataset": "d", "setting": setting, "method": method, "selection": selection, "seed": seed,
                         "id": [f"i{k}" for k in range(n)], "subject": [f"i{k}" for k in range(n)],
                         "label": y, "score": rng.normal(size=n) + shift * y, "threshold": threshold,
                         "subject_threshold": threshold})


def test_label_free_threshold_is_the_healthy_quantile():
    h = np.arange(100, dtype=float)
    t = label_free_threshold(h, 0.95)
    assert t in h and (h < t).mean() == pytest.approx(0.95, abs=0.011)
    assert np.isnan(label_free_threshold([np.nan]))
    with pytest.raises(ValueError, match="threshold_specificity"):
        label_free_threshold(h, 1.5)


def test_threshold_does_not_move_when_test_labels_are_permuted():
    rng = np.random.default_rng(0)
    df = _scores(rng)
    perm = df.copy()
    perm["label"] = rng.permutation(perm["label"].to_numpy())
    a = compute_metrics(df, "holdout_healthy").set_index("metric")["value"]
    b = compute_metrics(perm, "holdout_healthy").set_index("metric")["value"]
    assert a["threshold"] == b["threshold"] == 0.7
    # the oracle (Youden on the test labels) does move; the label-free one is what the table shows
    assert a["oracle_threshold"] != b["oracle_threshold"]
    s, y = df["score"].to_numpy(), df["label"].to_numpy()
    assert a["specificity"] == pytest.approx(((s < 0.7) & (y == 0)).sum() / (y == 0).sum())
    # a job without a held-out threshold gets NaN thresholded metrics, never a test-tuned fallback
    c = compute_metrics(df.drop(columns=["threshold", "subject_threshold"]), "holdout_healthy")
    c = c.set_index("metric")["value"]
    assert np.isnan(c["f1"]) and np.isfinite(c["auc"])


def test_experiment_rules_are_validated():
    exp = parse_experiment({"selection": "aucp", "threshold_specificity": 0.9})
    assert exp.selection == "aucp" and exp.threshold_specificity == 0.9 and exp.threshold_rule == "holdout_healthy"
    for bad, msg in (({"selection": "best"}, "selection"), ({"threshold_specificity": 1.2}, "threshold_specificity"),
                     ({"threshold_rule": "oracle"}, "threshold_rule")):
        with pytest.raises(ConfigError, match=msg):
            parse_experiment(bad)


def test_main_table_holds_one_selection_rule():
    rng = np.random.default_rng(1)
    scores = pd.concat([_scores(rng, method="gan", selection="last"), _scores(rng, method="gan", selection="aucp"),
                        _scores(rng, method="padim", selection="last")], ignore_index=True)
    metrics = compute_metrics(scores, "holdout_healthy")
    for rule, want in (("last", {("gan", "last"), ("padim", "last")}), ("aucp", {("gan", "aucp"), ("padim", "last")})):
        mm, ms, om, os_ = split_by_selection(metrics, scores, rule)
        assert set(zip(mm["method"], mm["selection"])) == want
        assert set(zip(ms["method"], ms["selection"])) == want
        assert not (set(zip(om["method"], om["selection"])) & want) and len(om) + len(mm) == len(metrics)


def test_transductive_rows_of_methods_not_trained_on_a_are_marked():
    rng = np.random.default_rng(2)
    scores = pd.concat([_scores(rng, method=m, setting=s, shift=sh) for m, sh in (("gan", 0.5), ("padim", 2.0))
                        for s in ("inductive", "transductive")], ignore_index=True)
    jobs = [{"dataset": "d", "method": "gan", "seed": 0, "status": "done", "train_sets": "mixed+healthy"},
            {"dataset": "d", "method": "padim", "seed": 0, "status": "done", "train_sets": "healthy"}]
    t = build_tables(compute_metrics(scores, "holdout_healthy"), scores, jobs=jobs, n_boot=50,
                     threshold_rule="holdout_healthy", selection_rule="last")
    ind = next(b for b in t.blocks if b.setting == "inductive")
    tra = next(b for b in t.blocks if b.setting == "transductive")
    assert NOT_ON_A not in ind.cells["padim"]["auc"].text and ind.cells["padim"]["auc"].bold
    assert tra.cells["padim"]["auc"].text.endswith(NOT_ON_A) and not tra.cells["padim"]["auc"].bold
    assert NOT_ON_A not in tra.cells["gan"]["auc"].text
    assert any("never on mixed set A" in n for n in t.notes)
    assert any("label-free threshold" in n for n in t.notes) and any("selection: last" in n for n in t.notes)


def test_natural_prevalence_tests_every_remaining_image():
    ds = generate_phantom(n_subjects=40, slices_per_subject=2, size=64, diseased_fraction=0.5, seed=3)
    balanced = make_split(ds, SplitConfig(test_size=0.2), 0)
    natural = make_split(ds, SplitConfig(test_size=0.2, test_diseased_fraction="natural"), 0)
    assert (natural.roles == "unused").sum() == 0 and (balanced.roles == "unused").sum() > 0
    assert (natural.roles == "test").sum() > (balanced.roles == "test").sum()
    for split in (balanced, natural):  # whole subjects stay in one role
        df = pd.DataFrame({"s": ds.subject_ids, "r": split.roles})
        assert df.groupby("s")["r"].nunique().max() == 1
    with pytest.raises(ConfigError, match="test_diseased_fraction"):
        SplitConfig.from_dict({"test_diseased_fraction": "balanced"})


def test_bootstrap_clusters_come_from_the_cluster_column():
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "subject": ["a", "b", "c", "d"],
                          "cluster": ["u1", "u1", "u2", "u3"], "label": [0, 0, 1, 1], "score": [0.1, 0.2, 0.8, 0.9]})
    _, _, _, groups = level_arrays(frame, "image")
    assert list(groups) == ["u1", "u1", "u2", "u3"]
    _, _, _, groups = level_arrays(frame.drop(columns=["cluster"]), "image")
    assert groups is None  # one image per subject and no cluster column: plain image resampling


def test_data_notes_state_the_test_prevalence():
    from anomaly_bench.reporting.notes import split_line

    def counts(th, td, unused):
        return {"test": {"healthy": th, "diseased": td}, "healthy": {"healthy": 50, "diseased": 0},
                "mixed": {"healthy": 20, "diseased": 10}, "holdout_healthy": {"healthy": 5, "diseased": 0},
                "unused": {"healthy": 0, "diseased": unused}}
    line = split_line({"0": counts(30, 30, 40), "1": counts(30, 30, 40)})
    assert "prevalence 50%" in line and "unused 40" in line and "2 seed(s)" in line
    line = split_line({"0": counts(30, 70, 0), "1": counts(30, 60, 10)})
    assert "prevalence 67-70%" in line and "60-70 diseased" in line
    assert split_line(None) is None and split_line({"0": {"test": {}}}) is None


def test_leakage_check_counts_test_images_with_a_training_twin():
    from anomaly_bench.data.leakage import leakage_line, leakage_record

    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(6, 1, 64, 64, generator=gen) * 2 - 1, 9, 1, 4)
    noise = 0.01 * torch.randn(2, 1, 64, 64, generator=gen)
    images = torch.cat([smooth, smooth[:2] * 0.9 + noise])  # 2 re-encoded (rescaled, noisy) copies
    roles = np.array(["healthy", "healthy", "mixed", "test", "test", "test", "test", "test"], dtype=object)
    rec = leakage_record(images, roles)
    assert rec["n_test"] == 5 and rec["n_test_with_training_twin"] == 2 and rec["max_corr"] > 0.99
    roles[6:] = "unused"  # the copies no longer tested
    assert leakage_record(images, roles)["n_test_with_training_twin"] == 0
    line = leakage_line({"0": rec, "1": {**rec, "n_test_with_training_twin": 0}})
    assert "0-2 test image(s) per seed" in line and ">= 0.99" in line
    assert leakage_line(None) is None and leakage_line({"0": {}}) is None
