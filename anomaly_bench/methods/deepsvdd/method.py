"""Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018), written from scratch in PyTorch.

Authors' code: lukasruff/Deep-SVDD-PyTorch: ``src/deepSVDD.py`` (pretrain, then train, weight hand-over),
``src/optim/deepSVDD_trainer.py`` (centre, objectives, radius, test score), ``src/optim/ae_trainer.py`` (pretraining),
``src/networks/cifar10_LeNet.py`` / ``mnist_LeNet.py`` (networks), ``src/main.py`` and the README's commands (recipe).
Not in the quick start (``in_default_experiment = False``): run it with ``anomaly-bench run --method deepsvdd``.

What follows the authors' code
------------------------------
* Network φ (:class:`~anomaly_bench.methods.deepsvdd.torch_model.LeNetEncoder`): LeNet-type, 5x5 convs without bias,
  BatchNorm with ``affine=False`` (eps 1e-4), LeakyReLU (slope 0.01, ``F.leaky_relu``'s default), 2x2 max-pool,
  a bias-free linear layer to ``rep_dim`` (their CIFAR-10 net: 3 blocks of 32/64/128 filters, rep_dim 128).
* Pretraining (``pretrain: true``, their default): the matching autoencoder (their CIFAR-10 one: BatchNorm1d on the
  code, decoder of 5x5 transposed convs + BN + LeakyReLU + x2 upsampling, Xavier init) trained with the per-image sum
  of squared errors; its encoder weights (and BN running statistics) then initialise φ.
* Centre c: the mean of φ's outputs over all training images, computed once before SVDD training and then fixed;
  coordinates with ``|c_i| < eps`` (0.1) are pushed to ``±eps``.
* Objective ``one-class`` (default): mean ‖φ(x) − c‖². ``soft-boundary``: R² + (1/ν)·mean(max(0, ‖φ(x) − c‖² − R²))
  with R = 0 for ``radius_warm_up`` epochs (10) and then the (1 − ν)-quantile of the distances ‖φ(x) − c‖.
* Adam (lr 1e-4) with the L2 penalty as its ``weight_decay`` (0.5e-6; pretraining ``ae_weight_decay``); the lr is
  multiplied by 0.1 at each of ``lr_milestones`` / ``ae_lr_milestones`` (their MultiStepLR, in epochs).
* Score: ‖φ(x) − c‖² (one-class); soft-boundary: ‖φ(x) − c‖² − R², φ in eval mode (BN running statistics). Their
  ``test()`` scores soft-boundary exactly as the training loss sees it (``dist - R ** 2``), so there is no
  train/test mismatch to fix there; the −R² shift does not change any ranking (only the threshold 0 = on the sphere).
* No anomaly maps: Deep SVDD is image-level (``maps`` and ``reconstructions`` are None).

Defects of the authors' code: the sound option is the default, their behaviour a flag
-------------------------------------------------------------------------------------
* ``radius_update: epoch`` (default) sets R at the end of each epoch from the distances of all that epoch's training
  images: the paper's block-coordinate scheme (R solved for with the network fixed, by the (1 − ν)-quantile).
  ``batch`` is their PyTorch code: R re-set after *every* mini-batch from that batch's distances only (a noisy
  quantile of ``batch_size`` values; their issue #21 notes the block-coordinate optimisation is not finished there).
* ``centre_bn: batch`` (default) computes c with batch-statistics BatchNorm (train mode, running statistics kept), the
  statistics the loss sees in training; ``running`` is their code (eval mode). With pretraining the two agree (the
  autoencoder's running statistics describe the data); without it, eval mode normalises by the untrained running
  statistics (mean 0, variance 1), so their c is taken in a space that training never sees.
* ``authors_lr_offset: false`` (default) keeps the full lr for exactly ``m`` epochs before milestone ``m``. Their loop
  calls ``scheduler.step()`` at the start of each epoch, so the lr drops one epoch early (after ``m − 1`` epochs);
  ``true`` reproduces that.

Deviations (and why)
--------------------
* Inputs: grey (1 channel), 32/64/128 px (any power of two >= 8) in [-1, 1] instead of their 28 px MNIST / 32 px RGB
  CIFAR-10 after global contrast normalisation and per-class min-max scaling to [0, 1]; the autoencoder ends in tanh
  (theirs: sigmoid). The encoder has ``n_blocks`` blocks of widths ``width·2^i`` for any size (3 at 64 px leave an 8x8
  map: the linear layer has 128·64 inputs); the decoder starts from ``rep_dim/16`` channels of 4x4 like theirs and adds
  one upsampling stage per doubling (widest width for the stages beyond the encoder's).
* Budget: ``epochs``/``ae_epochs`` as theirs, or ``iterations``/``ae_iterations`` (> 0 overrides; milestones and
  warm-up are then counted in iterations too), so the CPU profiles do not depend on the training-set size. The suite's
  sampler draws full batches only (drop-last; theirs keeps the last partial batch) and one ``batch_size`` serves both
  phases (their commands use 200 for both).
* Label-free selection checkpoints (``checkpoint_every``) are taken in the SVDD phase only, numbered in SVDD steps.

Loss log (``losses.csv``): ``phase`` (1 = autoencoder, 2 = SVDD), ``ae_loss``, ``svdd_loss``, ``mean_dist``,
``radius`` (the columns of the phase not running are 0). The training-health check judges ``svdd_loss`` of phase 2
(its loss rule); there are no reconstructions, so no healthy MAE is judged (``health_judge_mae = False``).
"""

from __future__ import annotations

from typing import Any

import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.sampler import BatchSampler
from anomaly_bench.harness.trainer import Trainer, check_fitted, check_scorable, cpu_state, keep_bn_stats, train_mode
from anomaly_bench.methods.deepsvdd.loss import ae_loss, initial_centre, radius_from, sq_dist, svdd_loss
from anomaly_bench.methods.deepsvdd.torch_model import LeNetAutoencoder, LeNetEncoder, check_arch
from anomaly_bench.nn.common import map_batches, seed_everything

#: the columns of losses.csv (those of the phase not running are 0)
LOSS_KEYS = ("phase", "ae_loss", "svdd_loss", "mean_dist", "radius")


@register_method("deepsvdd")
class DeepSVDD(AnomalyMethod):
    """Deep SVDD: a bias-free LeNet-type encoder trained to map healthy images close to a fixed centre c; score =
    squared distance to c. The module docstring says what follows lukasruff/Deep-SVDD-PyTorch and what deviates."""

    default_train_sets = "healthy"
    in_default_experiment = False
    # fit reads its training images by index (sampler) or slice (the centre pass) only; the radius uses the
    # per-batch distances, not the images (issue 24)
    streams_images = True
    health_loss = "svdd_loss"  # training-health check: the SVDD objective of phase 2 (losses.csv)
    health_loss_rows = {"phase": 2.0}
    # no reconstructions: an image-level distance score, nothing pixel-faithful to judge (as ALAD's semantic G(E(x)))
    health_judge_mae = False
    defaults = {
        "objective": "one-class",   # or soft-boundary
        "nu": 0.1,                  # soft-boundary: the fraction of training images allowed outside the sphere
        "rep_dim": 128,
        "width": 32,                # filters of the first conv block (then x2 per block): 32/64/128 as CIFAR-10
        "n_blocks": 3,
        "eps": 0.1,                 # |c_i| < eps -> ±eps
        "epochs": 150,
        "iterations": 0,            # > 0 overrides epochs (lr_milestones and radius_warm_up then count iterations)
        "lr": 1.0e-4,
        "lr_milestones": [50],
        "weight_decay": 0.5e-6,
        "batch_size": 200,
        "pretrain": True,
        "ae_epochs": 350,
        "ae_iterations": 0,         # > 0 overrides ae_epochs (ae_lr_milestones then count iterations)
        "ae_lr": 1.0e-4,
        "ae_lr_milestones": [250],
        "ae_weight_decay": 0.5e-6,
        "radius_warm_up": 10,       # soft-boundary: R stays 0 this many epochs (their warm_up_n_epochs)
        "radius_update": "epoch",   # batch = the authors' PyTorch code (see the module docstring)
        "centre_bn": "batch",       # running = the authors' code (eval-mode BN)
        "authors_lr_offset": False,  # True: the lr drops one epoch before each milestone, as in their loop
        "score_batch_size": 64,
        "log_every": 50,
        "checkpoint_every": 0,      # selection checkpoints, SVDD phase only (SVDD steps)
        "resume_every": 500,
    }
    choices = {"objective": ("one-class", "soft-boundary"), "radius_update": ("epoch", "batch"),
               "centre_bn": ("batch", "running")}

    @classmethod
    def validate_params(cls, params: dict[str, Any], where: str = "") -> dict[str, Any]:
        p = super().validate_params(params, where)
        where = where or "method 'deepsvdd'"
        if not 0 < p["nu"] <= 1:
            raise ConfigError(f"{where}: nu must be in (0, 1], got {p['nu']!r}")
        for k in ("eps", "weight_decay", "ae_weight_decay", "radius_warm_up"):
            if p[k] < 0:
                raise ConfigError(f"{where}: {k} must be >= 0, got {p[k]!r}")
        for k in ("rep_dim", "width", "n_blocks"):
            if p[k] < 1:
                raise ConfigError(f"{where}: {k} must be >= 1, got {p[k]!r}")
        for k in ("lr_milestones", "ae_lr_milestones"):
            m = p[k]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in m) or list(m) != sorted(m):
                raise ConfigError(f"{where}: {k} must be increasing positive integers (epochs, or iterations when "
                                  f"{'ae_' if k.startswith('ae') else ''}iterations > 0), got {m!r}")
        return p

    # -- construction -------------------------------------------------------------------------------
    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        c, h, w = image_shape
        if h != w:
            raise ConfigError(f"deepsvdd: images must be square, got {h}x{w}")
        p = self.params
        check_arch(h, p["n_blocks"], p["rep_dim"])
        return {"image_shape": tuple(image_shape), "channels": int(c), "size": int(h), "width": p["width"],
                "n_blocks": p["n_blocks"], "rep_dim": p["rep_dim"]}

    def _net_args(self, arch: dict[str, Any]) -> tuple[int, ...]:
        return arch["channels"], arch["size"], arch["width"], arch["n_blocks"], arch["rep_dim"]

    def schedule(self, n_train: int) -> dict[str, Any]:
        """Iterations of each phase and, in iterations, the lr milestones, the warm-up and one epoch (the sampler's
        full batches per pass over ``n_train`` images)."""
        p = self.params
        bpe = max(n_train // min(p["batch_size"], n_train), 1)
        offset = bpe if p["authors_lr_offset"] else 0

        def phase(epochs: int, iterations: int, milestones: list[int]) -> tuple[int, list[int], int]:
            unit = 1 if iterations > 0 else bpe
            total = iterations if iterations > 0 else epochs * bpe
            return total, [max(m * unit - offset, 0) for m in milestones], unit

        ae_total, ae_ms, _ = phase(p["ae_epochs"], p["ae_iterations"], p["ae_lr_milestones"])
        total, ms, unit = phase(p["epochs"], p["iterations"], p["lr_milestones"])
        return {"ae_total": ae_total if p["pretrain"] else 0, "ae_milestones": ae_ms, "total": total,
                "milestones": ms, "warm_up": p["radius_warm_up"] * unit, "epoch": bpe}

    # -- training -----------------------------------------------------------------------------------
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "DeepSVDD":
        p, dev = self.params, self.device
        gen = seed_everything(p["seed"])
        self.arch_ = arch = self._arch(train.image_shape)
        self._data = data = train.healthy.to(dev)
        self._sched = s = self.schedule(len(data))
        self.net = LeNetEncoder(*self._net_args(arch)).to(dev)
        self._opt = torch.optim.Adam(self.net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        state: dict[str, Any] = {"net": self.net, "opt": self._opt}
        self._ae = None
        if s["ae_total"]:
            self._ae = LeNetAutoencoder(*self._net_args(arch)).to(dev).train()
            self._opt_ae = torch.optim.Adam(self._ae.parameters(), lr=p["ae_lr"], weight_decay=p["ae_weight_decay"])
            state.update(ae=self._ae, opt_ae=self._opt_ae)
        self.c_, self.radius_, self._dists = None, torch.zeros((), device=dev), []
        sampler = BatchSampler(len(data), p["batch_size"], gen, data=data)
        ae_total = s["ae_total"]
        Trainer(self, ctx, total=ae_total + s["total"], arch=arch, samplers={"x": sampler}, state=state,
                extra=(self._extra_state, self._set_extra_state), boundaries=(ae_total,) if ae_total else (),
                checkpoint_index=lambda it: it - ae_total if it > ae_total else None,
                release=("_data", "_sched", "_opt", "_opt_ae", "_ae", "_dists")).run(self.training_step)
        self.net.eval()
        self.fitted_ = True
        return self

    def _extra_state(self) -> dict[str, Any]:
        return {"c": self.c_, "radius": self.radius_, "dists": list(self._dists)}

    def _set_extra_state(self, st: dict[str, Any]) -> None:
        dev = self.device
        self.c_ = None if st["c"] is None else st["c"].to(dev)
        self.radius_ = st["radius"].to(dev)
        self._dists = [d.to(dev) for d in st["dists"]]

    @staticmethod
    def _set_lr(opt: torch.optim.Optimizer, base: float, milestones: list[int], step: int) -> None:
        lr = base * 0.1 ** sum(step >= m for m in milestones)
        for g in opt.param_groups:
            g["lr"] = lr

    def _start_svdd(self) -> None:
        """The hand-over: φ gets the autoencoder's encoder weights (and BN running statistics), then c is fixed."""
        p = self.params
        if self._ae is not None:
            self.net.load_state_dict(self._ae.encoder.state_dict())
        if p["centre_bn"] == "running":
            with train_mode([self.net], False):
                self.c_ = initial_centre(self.net, self._data, p["batch_size"], p["eps"])
        else:
            with train_mode([self.net], True), keep_bn_stats(self.net):
                self.c_ = initial_centre(self.net, self._data, p["batch_size"], p["eps"])

    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """Phase 1 (``ae_total`` steps): one autoencoder step. Phase 2: one SVDD step (the first one hands the weights
        over and fixes c), then the soft-boundary radius update."""
        it, s, p = self._trainer.iteration, self._sched, self.params
        row: dict[str, torch.Tensor | float] = {k: 0.0 for k in LOSS_KEYS}
        if it < s["ae_total"]:
            self._set_lr(self._opt_ae, p["ae_lr"], s["ae_milestones"], it)
            loss = ae_loss(self._ae(x), x)
            self._opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            self._opt_ae.step()
            row.update(phase=1.0, ae_loss=loss.detach())
            return row
        step = it - s["ae_total"]
        if self.c_ is None:
            self._start_svdd()
        self.net.train()
        self._set_lr(self._opt, p["lr"], s["milestones"], step)
        dist = sq_dist(self.net(x), self.c_)
        loss = svdd_loss(dist, p["objective"], self.radius_, p["nu"])
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        if p["objective"] == "soft-boundary":
            self._update_radius(dist.detach(), step)
        row.update(phase=2.0, svdd_loss=loss.detach(), mean_dist=dist.detach().mean(), radius=self.radius_.clone())
        return row

    def _update_radius(self, dist: torch.Tensor, step: int) -> None:
        """``batch``: after warm-up, R from this batch's distances (their code). ``epoch``: at the end of each epoch
        past the warm-up, R from the distances of all that epoch's batches."""
        s, nu = self._sched, self.params["nu"]
        if self.params["radius_update"] == "batch":
            if step >= s["warm_up"]:
                self.radius_ = radius_from(dist, nu)
            return
        self._dists.append(dist)
        if (step + 1) % s["epoch"] == 0:
            if step + 1 >= s["warm_up"]:
                self.radius_ = radius_from(torch.cat(self._dists), nu)
            self._dists = []

    # -- scoring ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        dist = sq_dist(self.net(x), self.c_)
        return dist - self.radius_**2 if self.params["objective"] == "soft-boundary" else dist

    def score(self, images: torch.Tensor) -> ScoreResult:
        check_scorable(self, images)
        if len(images) == 0:
            return ScoreResult(torch.zeros(0, dtype=torch.float64).numpy())
        with train_mode([self.net], False):
            (scores,) = map_batches(self._score_batch, images, self.params["score_batch_size"], self.device)
        return ScoreResult(scores.double().numpy())

    # -- persistence --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        check_fitted(self, "net", "c_")
        return {"arch": dict(self.arch_), "net": cpu_state(self.net), "c": self.c_.detach().cpu().clone(),
                "radius": float(self.radius_)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        arch = {**state["arch"], "image_shape": tuple(state["arch"]["image_shape"])}
        self.arch_ = arch
        self.net = LeNetEncoder(*self._net_args(arch)).to(self.device).eval()
        self.net.load_state_dict(state["net"])
        self.c_ = state["c"].to(self.device)
        self.radius_ = torch.tensor(float(state["radius"]), dtype=self.c_.dtype, device=self.device)
        self.fitted_ = True
