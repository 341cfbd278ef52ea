"""An example third-party method, as a plugin: k-nearest-neighbour distance in (down-sampled) pixel space.

Use it without installing anything:

    anomaly-bench run --plugin examples/pixel_knn_plugin.py --method example_pixel_knn --method autoencoder

or ship it in your own package and declare it in your pyproject.toml:

    [project.entry-points."anomaly_bench.methods"]
    example_pixel_knn = "my_package.pixel_knn_plugin"

Profiles for a plugin that ships no YAML file go in the class attribute ``profiles``.

A plugin cannot register a name a built-in method already has (``register_method`` raises): the suite ships its own
``pixel_knn`` sanity baseline (``anomaly_bench/methods/sanity.py``, this example promoted, with maps), so the example
registers as ``example_pixel_knn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anomaly_bench.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets
from anomaly_bench.registry import register_method


@register_method("example_pixel_knn")
class PixelKNN(AnomalyMethod):
    """Mean distance to the k nearest healthy training images, on images average-pooled by ``pool``."""

    default_train_sets = "healthy"
    defaults = {"k": 5, "pool": 4}
    profiles = {"smoke": {"k": 3}, "ci": {"k": 5}, "paper": {"k": 5, "pool": 2}}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.float(), self.params["pool"]).flatten(1)

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "PixelKNN":
        self.bank = self._embed(train.healthy)
        self.fitted_ = True
        return self

    def score(self, images: torch.Tensor) -> ScoreResult:
        d = torch.cdist(self._embed(images), self.bank)
        k = min(self.params["k"], self.bank.shape[0])
        return ScoreResult(d.topk(k, largest=False).values.mean(1).double().numpy())

    def state_dict(self) -> dict:
        return {"bank": self.bank}

    def load_state_dict(self, state: dict) -> None:
        self.bank = state["bank"]
        self.fitted_ = True
