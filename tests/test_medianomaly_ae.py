"""MedIAnomaly / AE4AD's plain autoencoder (``medianomaly_ae``): the authors' architecture, their recipe's step
count, what it learns, and that the quick start leaves it out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_bench.core.config import method_params
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import TrainSets
from anomaly_bench.core.registry import default_experiment_methods, get_method, list_methods
from anomaly_bench.methods.medianomaly_ae import MedIAnomalyAE, MedIAnomalyAENet
from helpers import checkerboard, fit64, one_blob, score64


def _authors_param_count(c: int, size: int, w: int, hidden: int, latent: int) -> int:
    """Parameters of caiyu6666/MedIAnomaly ``networks/ae.py`` AE at depth 1, counted from its layer list: bias-free
    4x4 (transposed) convolutions with BN (weight + bias) after all but the output one; the dense bottleneck
    Linear(flat, hidden) BN1d ReLU Linear(hidden, latent) and its mirror."""
    chans = [c, w, 2 * w, 4 * w, 4 * w]
    convs = sum(16 * a * b for a, b in zip(chans, chans[1:]))
    bn_enc = sum(2 * b for b in chans[1:])
    bn_dec = sum(2 * b for b in chans[::-1][1:-1])
    flat = 4 * w * (size // 16) ** 2
    dense = (flat * hidden + hidden) + 2 * hidden + (hidden * latent + latent)
    dense += (latent * hidden + hidden) + 2 * hidden + (hidden * flat + flat)
    return 2 * convs + bn_enc + bn_dec + dense


@pytest.mark.parametrize("size,w,hidden,latent", [(64, 16, 1024, 16), (64, 16, 1024, 32), (128, 32, 512, 8)])
def test_network_is_the_authors_layer_list(size, w, hidden, latent):
    net = MedIAnomalyAENet(1, size, base_width=w, hidden=hidden, latent=latent)
    assert sum(p.numel() for p in net.parameters()) == _authors_param_count(1, size, w, hidden, latent)
    x = torch.randn(3, 1, size, size)
    net.eval()
    z = net.to_latent(net.encoder(x).flatten(1))
    assert z.shape == (3, latent)  # a dense latent of `latent` numbers, not a spatial map
    assert net(x).shape == x.shape
    assert isinstance(net.decoder[-1][-1], torch.nn.ConvTranspose2d)  # linear output: no BN, ReLU or tanh


def test_deeper_stages_add_3x3_layers_on_the_authors_side():
    """Depth 2: the extra 3x3 layer follows the down convolution at the output width and precedes the up
    convolution at the input width (their BasicBlock)."""
    net = MedIAnomalyAENet(1, 64, base_width=8, en_depth=2, de_depth=2)
    enc, dec = net.encoder[1], net.decoder[1]
    assert isinstance(enc[0], torch.nn.Conv2d) and enc[0].stride == (2, 2) and enc[3].in_channels == 16
    assert dec[0].kernel_size == (3, 3) and dec[0].in_channels == 32 and isinstance(dec[3], torch.nn.ConvTranspose2d)


def test_recipe_counts_optimizer_steps_like_their_epoch_loop():
    """600 epochs of 996 images at batch 64 are 600 * 16 Adam steps in their DataLoader loop (last batch partial);
    the method takes that many full batches."""
    m = MedIAnomalyAE(**method_params("medianomaly_ae", "paper"))
    assert m.params["epochs"] == 600 and m.params["batch_size"] == 64 and m.params["latent"] == 16
    assert m._iterations(996) == 600 * 16 and m._iterations(1024) == 600 * 16 and m._iterations(1025) == 600 * 17
    assert MedIAnomalyAE(epochs=2, batch_size=64)._iterations(10) == 2  # fewer images than a batch: one per epoch


def test_bad_sizes_and_widths_get_a_message():
    with pytest.raises(ValueError, match="divisible by 16"):
        MedIAnomalyAE(epochs=1).fit(TrainSets(torch.zeros(4, 1, 40, 40)))
    with pytest.raises(ConfigError, match="'latent'.*>= 1"):
        MedIAnomalyAE(latent=0)


def test_learns_the_healthy_blobs_and_flags_a_checkerboard():
    """Float64 (kernel-path independent): after a short fit the healthy blobs reconstruct far better than the
    mean image predicts them, and an out-of-distribution checkerboard scores above every healthy image."""
    train = one_blob(64, 16, seed=0)
    m = fit64(MedIAnomalyAE(epochs=40, batch_size=32, hidden=64, base_width=8, lr=3e-3, seed=0), TrainSets(train))
    held_out = one_blob(24, 16, seed=1)
    healthy = score64(m, held_out)
    mean_mse = float(((held_out.double() - train.double().mean(0)) ** 2).mean())
    assert healthy.mean() < 0.5 * mean_mse
    assert score64(m, checkerboard(2, 16)).min() > healthy.max()


def test_same_seed_same_scores():
    train = TrainSets(one_blob(64, 16, seed=0))
    a, b = (MedIAnomalyAE(epochs=2, batch_size=32, hidden=64, seed=3).fit(train) for _ in range(2))
    x = one_blob(8, 16, seed=5)
    assert np.array_equal(a.score(x).scores, b.score(x).scores)


def test_registered_but_not_in_the_quick_start():
    assert "medianomaly_ae" in list_methods() and get_method("medianomaly_ae") is MedIAnomalyAE
    assert "medianomaly_ae" not in default_experiment_methods() and "autoencoder" in default_experiment_methods()
