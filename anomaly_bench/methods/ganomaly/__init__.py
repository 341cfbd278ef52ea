"""GANomaly (Akcay et al., ACCV 2018): ``torch_model`` (networks), ``loss``, ``method`` (registered as ``ganomaly``)."""

from anomaly_bench.methods.ganomaly.loss import discriminator_loss, generator_losses, latent_score
from anomaly_bench.methods.ganomaly.method import LOSS_KEYS, GANomaly
from anomaly_bench.methods.ganomaly.torch_model import (
    DCGANDecoder,
    DCGANEncoder,
    NetD,
    NetG,
    check_size,
    dcgan_encoder_layers,
    maybe_reinit_discriminator,
    weights_init,
)

__all__ = ["GANomaly", "LOSS_KEYS", "NetG", "NetD", "DCGANEncoder", "DCGANDecoder", "check_size",
           "dcgan_encoder_layers", "weights_init", "maybe_reinit_discriminator", "generator_losses",
           "discriminator_loss", "latent_score"]
