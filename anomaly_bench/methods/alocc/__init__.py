"""ALOCC (Sabokrou et al., CVPR 2018): ``torch_model`` (networks), ``loss``, ``method`` (registered as ``alocc``)."""

from anomaly_bench.methods.alocc.loss import (
    add_noise,
    bce,
    discriminator_loss,
    refinement_loss,
    refiner_loss,
    tf_sigmoid_ce,
)
from anomaly_bench.methods.alocc.method import ALOCC
from anomaly_bench.methods.alocc.torch_model import (
    PRESETS,
    Discriminator,
    Refiner,
    SameConv,
    SameDeconv,
    build_networks,
    preset_widths,
)

__all__ = ["ALOCC", "PRESETS", "Discriminator", "Refiner", "SameConv", "SameDeconv", "build_networks", "preset_widths",
           "add_noise", "bce", "discriminator_loss", "refinement_loss", "refiner_loss", "tf_sigmoid_ce"]
