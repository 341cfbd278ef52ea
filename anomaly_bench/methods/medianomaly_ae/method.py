"""The plain autoencoder of MedIAnomaly / AE4AD (Cai et al., "Rethinking autoencoders for medical anomaly
detection from a theoretical perspective", MICCAI 2024; MedIAnomaly, MedIA 2025), as in caiyu6666/MedIAnomaly
(``networks/ae.py``, ``utils/ae_worker.py``, ``options.py``).

What differs from the suite's :class:`~anomaly_bench.methods.autoencoder.Autoencoder` (and decides the result,
AE4AD's point): a *dense* latent of ``latent`` numbers (16 by default; the suite's autoencoder keeps a spatial
64 x 4 x 4 map), ReLU and no output activation, MSE loss and a squared-error score. The recipe (their defaults):
base width 16, expansion 1, hidden 1024, latent 16, depth 1; Adam lr 1e-3, no weight decay, batch 64; 600 epochs
on the Brain Tumor split (``epochs`` of their ``options.py``: brain 600, the other sets 250); inputs grey, 64 px,
in [-1, 1]; score = mean over pixels of (x - x̂)², the model in eval mode (BN running statistics).

Deviation: their DataLoader keeps the last partial batch; the suite's one sampler draws full batches only
(drop-last), so the run takes the same number of optimizer steps, ``epochs * ceil(n / batch_size)``, with full
batches (about 3 % more images seen on 1,000 training images). Not in the quick start
(``in_default_experiment = False``): ``experiments/published_brain_tumor.yaml`` runs it on the published split.
"""

from __future__ import annotations

import math

from anomaly_bench.core.interface import register_method
from anomaly_bench.methods.autoencoder.method import Autoencoder
from anomaly_bench.methods.medianomaly_ae.torch_model import MedIAnomalyAENet


@register_method("medianomaly_ae")
class MedIAnomalyAE(Autoencoder):
    """MedIAnomaly's plain AE with a dense latent (see module docstring); trained on healthy set B."""

    in_default_experiment = False
    defaults = {"base_width": 16, "expansion": 1, "hidden": 1024, "latent": 16, "en_depth": 1, "de_depth": 1,
                "epochs": 600, "batch_size": 64, "lr": 1.0e-3, "weight_decay": 0.0, "loss": "l2",
                "score_norm": "l2", "log_every": 50, "checkpoint_every": 0, "resume_every": 500}
    choices = {"loss": ("l1", "l2"), "score_norm": ("l1", "l2")}

    def _build(self, channels: int) -> None:
        p = self.params
        self.net = MedIAnomalyAENet(channels, self.image_size, p["base_width"], p["expansion"], p["hidden"],
                                    p["latent"], p["en_depth"], p["de_depth"]).to(self.device)

    def _check_size(self, size: int) -> None:
        if size % 16:
            raise ValueError(f"medianomaly_ae: image size {size} must be divisible by 16 (four stride-2 stages)")

    def _iterations(self, n_train: int) -> int:
        return self.params["epochs"] * math.ceil(n_train / min(self.params["batch_size"], n_train))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "image_size": self.image_size}

    def load_state_dict(self, state: dict) -> None:
        self.image_size = state["image_size"]
        super().load_state_dict(state)
