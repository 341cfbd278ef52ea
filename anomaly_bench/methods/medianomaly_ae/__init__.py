"""MedIAnomaly / AE4AD's plain autoencoder: ``torch_model`` (network), ``method`` (registered; the loss is the
suite autoencoder's :func:`~anomaly_bench.methods.autoencoder.loss.reconstruction_loss`)."""

from anomaly_bench.methods.medianomaly_ae.method import MedIAnomalyAE
from anomaly_bench.methods.medianomaly_ae.torch_model import MedIAnomalyAENet

__all__ = ["MedIAnomalyAE", "MedIAnomalyAENet"]
