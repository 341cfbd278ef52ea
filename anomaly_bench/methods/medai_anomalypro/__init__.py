"""MedAI AnomalyPro (HealthyGAN; Brainomaly with ``head: additive``): ``torch_model`` (networks and heads), ``loss``,
``train_step`` (the training step and LR schedule), ``method`` (registered as ``medai_anomalypro``)."""

from anomaly_bench.methods.medai_anomalypro.loss import (
    additive_generator_losses,
    anomaly_map,
    critic_loss,
    focus_loss,
    generator_losses,
    gradient_penalty,
    gradient_penalty_from_output,
    mask_small_loss,
    mask_zero_one_loss,
)
from anomaly_bench.methods.medai_anomalypro.method import MedAIAnomalyPro, MissingMixedSetError
from anomaly_bench.methods.medai_anomalypro.torch_model import (
    Critic,
    Generator,
    InstanceNorm,
    additive_translate,
    auto_critic_layers,
    compose_healthy,
    compose_reconstruction,
    resolve_layout,
    split_head,
)
from anomaly_bench.methods.medai_anomalypro.train_step import AnomalyProTrainer, lr_factor

__all__ = [
    "MedAIAnomalyPro", "Generator", "Critic", "InstanceNorm", "AnomalyProTrainer", "split_head",
    "compose_healthy", "compose_reconstruction", "additive_translate", "mask_small_loss", "mask_zero_one_loss",
    "focus_loss", "gradient_penalty", "gradient_penalty_from_output", "critic_loss", "generator_losses",
    "additive_generator_losses", "anomaly_map", "auto_critic_layers", "lr_factor", "resolve_layout",
    "MissingMixedSetError",
]
