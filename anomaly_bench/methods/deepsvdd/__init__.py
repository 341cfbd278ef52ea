"""Deep SVDD (Ruff et al., ICML 2018): ``torch_model`` (LeNet-type encoder and its pretraining autoencoder), ``loss``
(objectives, centre, radius), ``method`` (registered as ``deepsvdd``)."""

from anomaly_bench.methods.deepsvdd.method import DeepSVDD
from anomaly_bench.methods.deepsvdd.torch_model import LeNetAutoencoder, LeNetEncoder

__all__ = ["DeepSVDD", "LeNetAutoencoder", "LeNetEncoder"]
