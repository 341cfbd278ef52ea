"""The split protocol: roles, sizes, subject and duplicate separation, determinism, manifests."""

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data.published_split import read_manifest
from anomaly_bench.data.records import ImageDataset
from anomaly_bench.data.split import SplitConfig, make_split, write_manifest


def make_ds(n_subjects=120, slices=3, frac_diseased=0.4, dup_pairs=10, roles=None, seed=0):
    rng = np.random.default_rng(seed)
    subj_label = (rng.random(n_subjects) < frac_diseased).astype(int)
    subjects = [f"p{s:03d}" for s in range(n_subjects) for _ in range(slices)]
    labels = np.repeat(subj_label, slices)
    n = len(labels)
    dup = -np.ones(n, dtype=int)
    # duplicate pairs across different subjects
    for g in range(dup_pairs):
        i, j = rng.choice(n, 2, replace=False)
        if labels[i] == labels[j]:
            dup[i] = dup[j] = g
    return ImageDataset("toy", torch.zeros(n, 1, 8, 8), labels, [f"img{i}" for i in range(n)], subjects,
                        dup_groups=dup, roles=roles)


def test_roles_are_subject_and_duplicate_safe():
    ds = make_ds()
    split = make_split(ds, SplitConfig(test_size=60, holdout_fraction=0.1), seed=3)
    roles = split.roles
    for s in set(ds.subjects):
        assert len(set(roles[np.array(ds.subjects) == s])) == 1
    for g in set(ds.dup_groups[ds.dup_groups >= 0]):
        assert len(set(roles[ds.dup_groups == g])) == 1
    assert not ((roles == "healthy") & (ds.labels == 1)).any()
    c = split.counts()
    assert 50 <= c["test"]["healthy"] + c["test"]["diseased"] <= 70
    assert abs(c["test"]["healthy"] - c["test"]["diseased"]) <= 6
    assert c["mixed"]["diseased"] > 0 and c["mixed"]["healthy"] > 0
    assert c["holdout_mixed"]["diseased"] + c["holdout_mixed"]["healthy"] > 0
    assert c["holdout_healthy"]["healthy"] > 0


def test_mixed_fraction_and_exact_sizes():
    ds = make_ds(n_subjects=300, slices=1, dup_pairs=0)
    split = make_split(ds, SplitConfig(test_size=40, mixed_diseased=30, mixed_healthy=60, holdout_fraction=0.0), 0)
    c = split.counts()
    assert c["mixed"] == {"healthy": 60, "diseased": 30}
    assert c["test"]["healthy"] + c["test"]["diseased"] == 40
    frac = make_split(ds, SplitConfig(test_size=40, mixed_size=100, mixed_diseased_fraction=0.25,
                                      holdout_fraction=0.0), 0).counts()["mixed"]
    assert frac == {"healthy": 75, "diseased": 25}


def test_same_seed_same_split_and_other_seed_differs():
    ds = make_ds()
    cfg = SplitConfig(test_size=60)
    a, b, c = make_split(ds, cfg, 1), make_split(ds, cfg, 1), make_split(ds, cfg, 2)
    assert np.array_equal(a.roles, b.roles)
    assert not np.array_equal(a.roles, c.roles)


def test_predefined_test_roles_win_and_leaks_move_to_test():
    n_sub, slices = 40, 2
    roles = np.array(["train"] * (n_sub * slices), dtype=object)
    roles[-20:] = "test"
    roles[0] = "test"  # subject p000 has one slice in the official test list, one in train
    ds = make_ds(n_subjects=n_sub, slices=slices, dup_pairs=0, roles=roles)
    split = make_split(ds, SplitConfig(test_size=0.5), 0)  # a fraction keeps the whole predefined test set
    assert set(split.roles[:2]) == {"test"}
    assert split.report["units_moved_to_test_because_they_also_appear_in_test"] == 1
    assert (split.roles[-20:] == "test").all()


def test_manifest_round_trip_and_errors(tmp_path):
    ds = make_ds()
    split = make_split(ds, SplitConfig(test_size=60), 0)
    path = write_manifest(split, ds, tmp_path / "m.csv")
    again = read_manifest(path, ds)
    assert np.array_equal(again.roles, split.roles)
    # reproduce a published split through the config
    assert np.array_equal(make_split(ds, SplitConfig(manifest=str(path)), 99).roles, split.roles)

    df = pd.read_csv(path)
    df.loc[0, "id"] = "not-an-image"
    df.to_csv(tmp_path / "bad_id.csv", index=False)
    with pytest.raises(DataError, match="bad_id.csv.*not in dataset"):
        read_manifest(tmp_path / "bad_id.csv", ds)
    df = pd.read_csv(path)
    df.loc[0, "role"] = "training"
    df.to_csv(tmp_path / "bad_role.csv", index=False)
    with pytest.raises(DataError, match="unknown roles"):
        read_manifest(tmp_path / "bad_role.csv", ds)
    # a manifest that puts a diseased image in healthy set B is refused
    df = pd.read_csv(path)
    df.loc[(df.label == 1).idxmax(), "role"] = "healthy"
    df.to_csv(tmp_path / "leak.csv", index=False)
    with pytest.raises(DataError):
        read_manifest(tmp_path / "leak.csv", ds)


def test_bad_split_config_names_the_key():
    with pytest.raises(ConfigError, match="test_sise"):
        SplitConfig.from_dict({"test_sise": 10})
    with pytest.raises(ConfigError, match="mixed_diseased_fraction"):
        SplitConfig.from_dict({"mixed_diseased_fraction": 1.5})


def test_impossible_request_is_a_clear_error():
    ds = make_ds(n_subjects=30, slices=1, dup_pairs=0)
    with pytest.raises(DataError, match="mixed_diseased"):
        make_split(ds, SplitConfig(test_size=10, mixed_diseased=1000), 0)
