"""ALAD (Zenati et al., ICDM 2018): ``torch_model`` (networks), ``loss``, ``method`` (registered as ``alad``)."""

from anomaly_bench.methods.alad.loss import bce, discriminator_losses, fm_score, generator_encoder_losses
from anomaly_bench.methods.alad.method import ALAD, step_logits
from anomaly_bench.methods.alad.torch_model import (
    DiscriminatorXX,
    DiscriminatorXZ,
    DiscriminatorZZ,
    Encoder,
    Generator,
    build_networks,
    dxx_widths,
    pow2_size,
    stage_widths,
)

__all__ = ["ALAD", "step_logits", "DiscriminatorXX", "DiscriminatorXZ", "DiscriminatorZZ", "Encoder", "Generator",
           "build_networks", "dxx_widths", "pow2_size", "stage_widths", "bce", "discriminator_losses", "fm_score",
           "generator_encoder_losses"]
