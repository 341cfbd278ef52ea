"""Convolutional autoencoder: the reference method that proves the pipeline.

A standard baseline of the field (e.g. Baur et al., MedIA 2021, "Autoencoders for unsupervised anomaly
segmentation in brain MR images"): a strided-conv encoder to a spatial bottleneck, a mirrored decoder,
trained with the L1 or L2 reconstruction loss on healthy images. Score = mean |x − x̂| per image
(``score_norm: l1``) or mean (x − x̂)² (``l2``); map = |x − x̂|.
"""

from __future__ import annotations

import torch

from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer
from anomaly_bench.methods.autoencoder.loss import reconstruction_loss
from anomaly_bench.methods.autoencoder.torch_model import ConvAutoencoder
from anomaly_bench.nn.common import map_batches, seed_everything


@register_method("autoencoder")
class Autoencoder(AnomalyMethod):
    """Convolutional autoencoder trained on healthy set B (see module docstring)."""
    streams_images = True  # fit reads its training images by index only (issue 24)

    default_train_sets = "healthy"
    health_loss = "recon"  # its reconstruction/translation term in losses.csv (training-health check)
    defaults = {"width": 32, "depth": 4, "latent_channels": 64, "iterations": 2000, "batch_size": 32,
                "lr": 1.0e-3, "loss": "l2", "score_norm": "l1", "log_every": 50, "checkpoint_every": 0,
                "resume_every": 200}
    choices = {"loss": ("l1", "l2"), "score_norm": ("l1", "l2")}

    def _build(self, channels: int) -> None:
        p = self.params
        self.net = ConvAutoencoder(channels, p["width"], p["depth"], p["latent_channels"]).to(self.device)

    #: scoring-only parameters: a resumed run may change them
    RESUME_FREE = ("score_norm",)

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "Autoencoder":
        p, dev = self.params, self.device
        self._check_size(train.image_shape[-1])
        gen = seed_everything(p["seed"])
        self.channels, self.image_size = train.image_shape[0], train.image_shape[-1]
        self._build(self.channels)
        self._opt = torch.optim.Adam(self.net.parameters(), lr=p["lr"], weight_decay=p.get("weight_decay", 0.0))
        data = train.healthy.to(dev)
        sampler = BatchSampler(len(data), p["batch_size"], gen, data=data)
        self.net.train()
        Trainer(self, ctx, total=self._iterations(len(data)), arch={"image_shape": tuple(train.image_shape)},
                samplers={"x": sampler}, state={"net": self.net, "opt": self._opt},
                resume_free=self.RESUME_FREE, release=("_opt",)).run(self.training_step)
        self.fitted_ = True
        return self

    def _check_size(self, size: int) -> None:
        step = 2 ** self.params["depth"]
        if size % step:
            raise ValueError(f"{self.name}: image size {size} must be divisible by 2**depth={step}")

    def _iterations(self, n_train: int) -> int:
        """Optimizer steps of the whole run (``iterations``; a subclass may count epochs of ``n_train`` images)."""
        return self.params["iterations"]

    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = reconstruction_loss(self.params["loss"], self.net(x), x)
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return {"recon": loss.detach()}

    def _residual(self, x: torch.Tensor):
        rec = self.net(x)
        return rec, (x - rec).abs()

    def score(self, images: torch.Tensor) -> ScoreResult:
        self.net.eval()
        rec, res = map_batches(self._residual, images, 64, self.device)
        per_pixel = res if self.params["score_norm"] == "l1" else res**2
        scores = per_pixel.flatten(1).mean(1)
        return ScoreResult(scores.double().numpy(), maps=res[:, 0].numpy(), reconstructions=rec[:, 0].numpy())

    def state_dict(self) -> dict:
        return {"channels": self.channels, "net": {k: v.cpu() for k, v in self.net.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.channels = state["channels"]
        self._build(self.channels)
        self.net.load_state_dict(state["net"])
        self.fitted_ = True
