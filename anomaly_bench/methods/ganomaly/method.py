"""GANomaly (Akcay, Atapour-Abarghouei & Breckon, ACCV 2018), written from scratch in PyTorch.

Authors' code: samet-akcay/ganomaly@78da4ea (``lib/networks.py``, ``lib/model.py`` after the
feature-matching PR #45, ``options.py``). Spec: baselines.md §4. Not anomalib's GANomaly, which differs
in its adversarial and encoder losses (baselines.md §5.7).

What follows the authors' code
------------------------------
* NetG = encoder E1 → decoder → encoder E2, returning (x̂, z, ẑ); DCGAN encoder: conv k4 s2 p1 → ndf,
  LeakyReLU(0.2) (no BN), then while size > 4: conv k4 s2 p1 C → 2C + BN + LeakyReLU(0.2), final conv
  k4 s1 p0 → nz (no activation); all convs bias-free. Decoder: convT k4 s1 p0 nz → ngf/2·size/4 + BN +
  ReLU, convT k4 s2 p1 halving channels until size/2 (+BN+ReLU), convT k4 s2 p1 → nc, tanh.
  ``extra_layers`` adds the authors' optional 3x3 conv+BN+activation layers (default 0).
* NetD = the same encoder with nz = 1: ``features`` = all layers but the last conv, ``classifier`` =
  last conv + sigmoid. (The authors build it with ``ngf``; we expose ``ndf``, default equal.)
* Init (``weights_init``): conv/convT weights N(0, 0.02); BN weight N(1, 0.02), bias 0.
* Losses: L_G = w_adv·mean (f(x) - f(x̂))² (feature matching on D's features, D in train mode)
  + w_con·mean |x - x̂| + w_enc·mean (z - ẑ)², weights 1/50/1. L_D = 0.5·[BCE(D(x), 1) + BCE(D(x̂), 0)].
  Adam lr 2e-4, β = (0.5, 0.999) for both nets. Batch 64, 15 epochs, last incomplete batch dropped.
* Order per iteration (``optimize_params``): forward G; forward D on x and x̂.detach(); G step; D step
  with the predictions from before the G step; if L_D < 1e-5 the D weights are re-initialised with
  ``weights_init`` (optimiser state kept, as in the authors' ``reinit_d``).
* Score: s(x) = mean_k (z_k - ẑ_k)² over the nz latent dimensions. The authors min-max normalise it over
  the test set, which preserves the ranking; we return the raw value.

Deviations (and why)
--------------------
* No test-set model selection: the authors evaluate the test set after each epoch and keep the weights
  with the best test AUC. We train a fixed number of ``epochs``; label-free selection is the harness's
  job (selection checkpoints every ``checkpoint_every`` iterations). ``iterations > 0`` replaces the epoch
  budget by an iteration budget that does not depend on the training-set size (the ``cpu`` profile).
* BN at test time (``bn_test_mode``). ``eval`` (default): running statistics, so a score does not depend
  on the other images in the batch. ``train_bs1``: the authors' protocol (their ``test()`` never calls
  ``.eval()``; Akcay's stated intent is batch size 1 at test; MedIAnomaly does the same): every image is
  passed alone through NetG in train mode, i.e. normalised by its own statistics. In the authors' code
  this also overwrites the stored running statistics with test-set statistics; we run these passes on
  a throw-away copy of NetG, so scoring never changes the model.
* Image sizes must be powers of two ≥ 16 (the authors assert a multiple of 16, but other sizes break
  their decoder loop). 1-channel (grey) inputs in [-1, 1]; nc follows the data.
* ``residual_map`` (default false): optionally return |x - x̂| as a pixel map. **Not in the original**
  (GANomaly is image-level only). x̂ is always returned as the reconstruction.
* The D re-initialisation needs L_D on the host every iteration (one device sync per iteration, as in
  the authors' code).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer, check_fitted, cpu_state
from anomaly_bench.methods.ganomaly.loss import discriminator_loss, generator_losses, latent_score
from anomaly_bench.methods.ganomaly.torch_model import NetD, NetG, check_size, maybe_reinit_discriminator, weights_init
from anomaly_bench.nn.common import map_batches, seed_everything, set_requires_grad

#: the columns of losses.csv (``d_reinits``: re-initialisations in the window)
LOSS_KEYS = ("d_loss", "g_loss", "g_adv", "g_con", "g_enc", "d_reinits")


@register_method("ganomaly")
class GANomaly(AnomalyMethod):
    """GANomaly: encoder-decoder-encoder generator + DCGAN discriminator; score = mean (z - ẑ)².

    See the module docstring for what follows samet-akcay/ganomaly and where (and why) we deviate.
    """
    streams_images = True  # fit reads its training images by index only (issue 24)

    default_train_sets = "healthy"
    health_loss = "g_con"  # its reconstruction/translation term in losses.csv (training-health check)
    defaults = {
        "epochs": 15,
        "iterations": 0,          # > 0 overrides epochs (one iteration = one G step + one D step)
        "batch_size": 64,
        "lr": 2.0e-4,
        "beta1": 0.5,
        "nz": 100,
        "ngf": 64,
        "ndf": 64,
        "extra_layers": 0,
        "w_adv": 1.0,
        "w_con": 50.0,
        "w_enc": 1.0,
        "d_reinit_threshold": 1.0e-5,
        "bn_test_mode": "eval",
        "residual_map": False,      # |x - x̂| as pixel map: NOT in the original
        "score_batch_size": 64,
        "checkpoint_every": 0,      # iterations between selection checkpoints
        "log_every": 50,
        "resume_every": 500,        # iterations between resume states (0 = only at the end)
    }
    choices = {"bn_test_mode": ("eval", "train_bs1")}

    # -- construction -------------------------------------------------------------------------------
    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        c, h, w = image_shape
        if h != w:
            raise ConfigError(f"ganomaly: images must be square, got {h}x{w}")
        check_size(h)
        p = self.params
        return {"channels": int(c), "size": int(h), "nz": p["nz"], "ngf": p["ngf"], "ndf": p["ndf"],
                "extra_layers": p["extra_layers"]}

    def _build(self, arch: dict[str, Any], with_d: bool = True) -> None:
        self.arch_ = dict(arch)
        self.G = NetG(arch["size"], arch["channels"], arch["nz"], arch["ngf"], arch["extra_layers"])
        self.G.apply(weights_init)
        self.G.to(self.device)
        if with_d:
            self.D = NetD(arch["size"], arch["channels"], arch["ndf"], arch["extra_layers"])
            self.D.apply(weights_init)
            self.D.to(self.device)
            self.d_reinits_ = 0

    # -- training -----------------------------------------------------------------------------------
    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """One iteration in the authors' order; returns the losses (device tensors) and ``d_reinits`` (1.0 when the
        discriminator was re-initialised, counted in ``d_reinits_``)."""
        p = self.params
        self.G.train()
        self.D.train()
        # forward G, then D on real and on detached fake (predictions kept for the D step)
        x_hat, z, z_hat = self.G(x)
        pred_real, _ = self.D(x)
        pred_fake, _ = self.D(x_hat.detach())
        # G step: feature matching with D in train mode (D's weights get no update from it)
        set_requires_grad(self.D, False)
        with torch.no_grad():
            feat_real = self.D(x)[1]
        feat_fake = self.D(x_hat)[1]
        set_requires_grad(self.D, True)
        g_loss, adv, con, enc = generator_losses(feat_real, feat_fake, x, x_hat, z, z_hat,
                                                 p["w_adv"], p["w_con"], p["w_enc"])
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        # D step on the pre-G-step predictions, then re-initialise D if its loss collapsed
        d_loss = discriminator_loss(pred_real, pred_fake)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        reinit = maybe_reinit_discriminator(self.D, float(d_loss.detach()), p["d_reinit_threshold"])
        self.d_reinits_ += int(reinit)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "g_adv": adv.detach(),
                "g_con": con.detach(), "g_enc": enc.detach(), "d_reinits": float(reinit)}

    #: scoring-only parameters: a resumed run may change them
    RESUME_FREE = ("bn_test_mode", "residual_map")

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "GANomaly":
        p, dev = self.params, self.device
        if p["batch_size"] < 1 or p["epochs"] < 0 or p["iterations"] < 0:
            raise ConfigError(f"ganomaly: batch_size must be >= 1, epochs and iterations >= 0, "
                              f"got {p['batch_size']}, {p['epochs']} and {p['iterations']}")
        gen = seed_everything(p["seed"])
        self._build(self._arch(train.image_shape))
        data = train.healthy.to(dev) if dev.type != "cpu" else train.healthy
        sampler = BatchSampler(len(data), p["batch_size"], gen, data=data)
        lr, betas = float(p["lr"]), (float(p["beta1"]), 0.999)  # YAML may give ints
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        self.d_reinits_ = 0

        def set_extra(held: dict[str, Any]) -> None:
            self.d_reinits_ = int(held["d_reinits"])

        total = p["iterations"] if p["iterations"] > 0 else p["epochs"] * sampler.batches_per_epoch
        trainer = Trainer(self, ctx, total=total, arch=self.arch_,
                          samplers={"x": sampler},
                          state={"G": self.G, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d},
                          extra=(lambda: {"d_reinits": self.d_reinits_}, set_extra), log_sums=("d_reinits",),
                          resume_free=self.RESUME_FREE)
        trainer.run(self.training_step)
        if self.d_reinits_:
            trainer.ctx.info(f"ganomaly: the discriminator was re-initialised {self.d_reinits_} time(s)")
        self.G.eval()
        self.D.eval()
        self.fitted_ = True
        return self

    # -- scoring ------------------------------------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def _forward_score(netg: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_hat, z, z_hat = netg(x)
        return latent_score(z, z_hat), (x - x_hat).abs()[:, 0], x_hat[:, 0]

    def score(self, images: torch.Tensor) -> ScoreResult:
        check_fitted(self, "G")
        if self.params["bn_test_mode"] == "eval":
            netg, bs = self.G.eval(), self.params["score_batch_size"]
        else:  # authors' protocol: train-mode BN, one image at a time, on a copy (stored stats untouched)
            netg, bs = copy.deepcopy(self.G).train(), 1
        scores, maps, recs = map_batches(lambda x: self._forward_score(netg, x), images, bs, self.device)
        return ScoreResult(scores.numpy(), maps.numpy() if self.params["residual_map"] else None, recs.numpy())

    # -- persistence --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """NetG only (the score needs no discriminator)."""
        check_fitted(self, "G")
        return {"arch": dict(self.arch_), "G": cpu_state(self.G)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build(state["arch"], with_d=False)
        self.G.load_state_dict(state["G"])
        self.G.eval()
        self.fitted_ = True
