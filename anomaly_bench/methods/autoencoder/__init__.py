"""Convolutional autoencoder (the reference method): ``torch_model`` (network), ``loss``, ``method`` (registered)."""

from anomaly_bench.methods.autoencoder.loss import reconstruction_loss
from anomaly_bench.methods.autoencoder.method import Autoencoder
from anomaly_bench.methods.autoencoder.torch_model import ConvAutoencoder

__all__ = ["Autoencoder", "ConvAutoencoder", "reconstruction_loss"]
