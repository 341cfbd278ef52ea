"""f-AnoGAN (Schlegl et al., MedIA 2019): ``torch_model`` (networks), ``loss``, ``method`` (registered: ``fanogan``)."""

from anomaly_bench.methods.fanogan.loss import gradient_penalty, izif_per_sample
from anomaly_bench.methods.fanogan.method import LOSS_KEYS, FAnoGAN
from anomaly_bench.methods.fanogan.torch_model import (
    Critic,
    DownTrunk,
    Encoder,
    Generator,
    ResidualBlock,
    critic_channels,
    critic_norm,
    frozen_bn_stats,
    n_resample_blocks,
    tf_batchnorm,
    tf_conv,
    tf_linear,
    upsample2,
)

__all__ = ["FAnoGAN", "LOSS_KEYS", "Critic", "DownTrunk", "Encoder", "Generator", "ResidualBlock", "critic_channels",
           "critic_norm", "frozen_bn_stats", "n_resample_blocks", "tf_batchnorm", "tf_conv", "tf_linear", "upsample2",
           "gradient_penalty", "izif_per_sample"]
