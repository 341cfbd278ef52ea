"""Shared test helpers: synthetic image sets for the method tests, checks that several method test modules
make alike (smoke fits, determinism, batch independence, save/load), and a FitContext that simulates a
killed job.

Imported by the test modules as ``from helpers import ...`` (pytest puts tests/ on ``sys.path``, as for
``conftest``). The ``one_thread`` fixture lives in conftest.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_bench.core.config import method_params
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets
from anomaly_bench.core.registry import get_method


# --------------------------------------------------------------------------------------------------
# synthetic images
# --------------------------------------------------------------------------------------------------
def three_blobs(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Healthy toy images: three smooth Gaussian blobs, scaled to [-0.8, 0.8] (ALAD, ALOCC)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        img = torch.zeros(size, size)
        for _ in range(3):
            cx, cy = (torch.rand(2, generator=g) * 1.2 - 0.6).tolist()
            r = 0.25 + 0.2 * torch.rand(1, generator=g).item()
            img += torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        out[i, 0] = img / img.max() * 1.6 - 0.8
    return out


def one_blob(n: int, size: int, seed: int) -> torch.Tensor:
    """Healthy set: one smooth Gaussian blob per image, random centre and width, in [-1, 1] (f-AnoGAN,
    GANomaly)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy = (torch.rand(2, n, 1, 1, generator=g) - 0.5) * 0.6
    r = 0.35 + 0.15 * torch.rand(n, 1, 1, generator=g)
    return (torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r ** 2)) * 1.6 - 0.8)[:, None].float()


def checkerboard(n: int, size: int, period: int = 4) -> torch.Tensor:
    """An obvious anomaly for the blob sets: a +-0.9 checkerboard of ``period``-pixel squares."""
    i = torch.arange(size)
    board = torch.where((i[:, None] // period + i[None] // period) % 2 == 0, 0.9, -0.9)
    return board.expand(n, 1, size, size).clone()


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Healthy-like images: smooth random fields in [-1, 1] (PaDiM, PatchCore)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 1, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic")
    return (x / x.abs().amax(dim=(1, 2, 3), keepdim=True) * 0.6).float()


def with_lesion(x: torch.Tensor) -> torch.Tensor:
    """Anomalous version of ``smooth_images``: a saturated disc left of centre."""
    y = x.clone()
    h, w = y.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y[:, :, ((yy - h // 2) ** 2 + (xx - w // 3) ** 2) < (h // 6) ** 2] = 1.0
    return y


# --------------------------------------------------------------------------------------------------
# smoke fits shared by the ALAD and ALOCC tests
# --------------------------------------------------------------------------------------------------
def smoke_fits(name: str, n: int = 2) -> list[AnomalyMethod]:
    """``n`` smoke-profile fits of method ``name``, all with the same (default) seed, on ``three_blobs(64)``."""
    params = method_params(name, "smoke")
    train = TrainSets(three_blobs(64, seed=0))
    return [get_method(name)(**params).fit(train) for _ in range(n)]


def fit64(m: AnomalyMethod, train: TrainSets, ctx: FitContext | None = None) -> AnomalyMethod:
    """Fit ``m`` in float64 (networks built and trained under a float64 default dtype).

    Assertions on what a short training learned must use this: float32 last-bit differences between CPU kernel
    paths (AVX2 / AVX-512 ATen kernels, oneDNN, MKL) grow within a few dozen iterations into different models
    (ALOCC's smoke fit flags inverted contrast on one path and not on another), float64 ones stay ~1e-12."""
    from anomaly_bench.harness.regress_exact import float64_default

    with float64_default():
        return m.fit(TrainSets(train.healthy.double(), None if train.mixed is None else train.mixed.double()), ctx)


def score64(m: AnomalyMethod, x: torch.Tensor) -> np.ndarray:
    """Scores of a :func:`fit64` model for ``x`` (in float64)."""
    from anomaly_bench.harness.regress_exact import float64_default

    with float64_default():
        return m.score(x.double()).scores


def smoke_fit64(name: str) -> AnomalyMethod:
    """One smoke-profile fit of ``name`` on ``three_blobs(64)`` in float64 (see :func:`fit64`)."""
    return fit64(get_method(name)(**method_params(name, "smoke")), TrainSets(three_blobs(64, seed=0)))


def check_seed_determinism(pair: list[AnomalyMethod], test: torch.Tensor, scores: np.ndarray) -> None:
    """The second of two :func:`smoke_fits` scores ``test`` bit-identically to the first (``scores``); the
    same fit with seed 1 does not."""
    assert np.array_equal(scores, pair[1].score(test).scores)  # same seed -> bit-identical
    other = type(pair[0])(**{**pair[0].params, "seed": 1}).fit(TrainSets(three_blobs(64, seed=0)))
    assert not np.array_equal(scores, other.score(test).scores)


def check_batch_independence(m: AnomalyMethod, x: torch.Tensor, scores: np.ndarray, **tol: float) -> None:
    """Scoring ``x`` one image at a time, or shuffled, gives the whole batch's ``scores`` (within ``tol``)."""
    single = np.array([m.score(x[i:i + 1]).scores[0] for i in range(len(x))])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    shuffled = m.score(x[perm]).scores
    np.testing.assert_allclose(single, scores, **tol)
    np.testing.assert_allclose(shuffled, scores[perm.numpy()], **tol)


def load_both_ways(m: AnomalyMethod, path: Path) -> tuple[AnomalyMethod, AnomalyMethod]:
    """``m`` saved at ``path`` and loaded back by its class and by ``AnomalyMethod.load`` (both of its class)."""
    path = m.save(path)
    loaded = (type(m).load(path), AnomalyMethod.load(path))
    assert all(isinstance(x, type(m)) for x in loaded)
    return loaded


# --------------------------------------------------------------------------------------------------
# checks shared by the PaDiM and PatchCore tests (fitted on smooth_images(24, 48, 0))
# --------------------------------------------------------------------------------------------------
def check_lesion_scores(fitted: AnomalyMethod) -> ScoreResult:
    """Lesioned images all score higher than the same images without; maps come at the input resolution and
    there are no reconstructions. Returns the lesioned images' result."""
    test = smooth_images(6, 48, 1)
    r_ok, r_bad = fitted.score(test), fitted.score(with_lesion(test))
    assert np.all(r_bad.scores > r_ok.scores)
    assert r_ok.maps.shape == (6, 48, 48) and r_ok.reconstructions is None
    return r_bad


def check_save_load(fitted: AnomalyMethod, path: Path) -> tuple[AnomalyMethod, torch.Tensor, ScoreResult]:
    """``save`` then ``AnomalyMethod.load`` give the same scores and maps on lesioned images. Returns the
    loaded method, the test images and the fitted method's result on them."""
    test = with_lesion(smooth_images(4, 48, 4))
    ref = fitted.score(test)
    loaded = AnomalyMethod.load(fitted.save(path))
    res = loaded.score(test)
    np.testing.assert_array_equal(res.scores, ref.scores)
    np.testing.assert_array_equal(res.maps, ref.maps)
    return loaded, test, ref


# --------------------------------------------------------------------------------------------------
# killed jobs
# --------------------------------------------------------------------------------------------------
class Killed(Exception):
    """A simulated kill of a training job."""


@dataclass
class KillAfterResumeSave(FitContext):
    """A FitContext whose job dies right after a resume state is saved: the first one, or, with
    ``kill_step``, the one whose ``state["step"]`` is ``kill_step``."""

    kill_step: int | None = None

    def save_resume(self, state: dict) -> None:
        super().save_resume(state)
        if self.kill_step is None or state["step"] == self.kill_step:
            raise Killed


def diverging_plugin_source(name: str) -> str:
    """Source of a plugin file registering ``name``: a method whose loss turns NaN at iteration 7 (its class is
    ``Diverging``, so a test can append subclasses)."""
    return (
        "import numpy as np\n"
        "from anomaly_bench.interface import AnomalyMethod, FitContext, ScoreResult\n"
        "from anomaly_bench.registry import register_method\n"
        f"@register_method({name!r}, overwrite=True)\n"
        "class Diverging(AnomalyMethod):\n"
        "    def fit(self, train, ctx=None):\n"
        "        (ctx or FitContext()).log_losses(7, {'loss_d': float('nan')})\n"
        "    def score(self, images):\n"
        "        return ScoreResult(np.zeros(len(images)))\n"
        "    def state_dict(self):\n        return {}\n"
        "    def load_state_dict(self, s):\n        pass\n")
