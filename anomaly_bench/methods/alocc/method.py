"""ALOCC: Adversarially Learned One-Class Classifier (Sabokrou et al., CVPR 2018), from scratch in PyTorch.

Authors' code: khalooei/ALOCC-CVPR2018@d1810b2b (TensorFlow 1): ``models.py`` (networks, losses, training
loop), ``ops.py`` (DCGAN-style layers), ``kh_tools.py`` (noise); the paper PDF ships in that repository.

What follows the authors' code (``preset: code``, the default)
----------------------------------------------------------
* R ("generator" in the code), an encoder-decoder without skips: conv k5 s2 TF-SAME ``df*2, df*4, df*8``
  (BN, LReLU 0.2), then transposed conv k5 s2 TF-SAME ``gf*2, gf`` (BN, ReLU) and a last one to C channels
  with tanh; ``df = gf = 16``. D: conv k5 s2 ``df, df*2, df*4, df*8`` (BN from the second on, LReLU),
  flatten, linear -> 1 logit. Conv weights truncated-normal(0.02), transposed-conv/linear weights N(0, 0.02),
  zero biases. BN = ``tf.contrib.layers.batch_norm(decay=0.9, eps=1e-5)`` -> ``BatchNorm2d(eps=1e-5,
  momentum=0.1)``; its moving statistics are updated by every training-mode forward (``updates_collections
  =None``), which is torch's behaviour too.
* TF 'SAME' geometry is reproduced exactly: convs pad 1 before / 2 after; transposed convs run VALID and
  crop ``[1:1+2H]``.
* Training noise: ``X~ = clip(X + N(0, 0.155^2), -1, 1)`` (``skimage.util.random_noise(var=0.155**2)``),
  drawn **once** before training and reused every epoch (``noise_per_epoch: false``).
* Losses: D ``BCE(D(X),1) + BCE(D(R(X~)),0)``; R ``BCE(D(R(X~)),1) + w * L_R``. ``refinement_loss:
  code_bce_noisy`` (default) is the code's ``mean(sigmoid_cross_entropy_with_logits(logits=R(X~),
  labels=X~))`` (tanh output used as logits, noisy input as target) with ``w = r_alpha = 0.2``.
* TF-style RMSprop (ms initialised to 1, decay 0.9, eps 1e-10 inside the sqrt), lr 2e-3 for both nets;
  batch 128, 40 epochs, drop-last; per batch 1 D step then 2 R steps on the same noisy batch.
* Score: ``-logit D(R(x))`` on the **clean** input (paper eq. 7 thresholds ``D(R(X))``; the logit avoids
  sigmoid saturation ties). ``score: d_x`` gives the paper's OCC1 variant ``-logit D(x)``.

Paper alternatives (flags)
--------------------------
* ``preset: paper``: R = conv 64-128-256-512, transposed conv 256-128-64-C; D = conv 64-128-256-512;
  BN eps 1e-6 (paper, Fig. 3/4).
* ``width`` scales either preset (base width ``df = gf``; 0 = the preset's 16 / 64). Smaller widths are only
  for quick CI runs.
* ``refinement_loss: paper_mse_clean``: ``L_R = mean((R(X~) - X)^2)`` against the clean image, with the
  paper's ``lambda = 0.4``. ``refinement_weight`` (default ``null`` = 0.2 for the code loss, 0.4 for the
  paper loss) sets the weight explicitly.

Deviations (with reasons, flags give the authors' behaviour)
------------------------------------------------------------
* ``bn_test_mode: eval`` (default): BN uses moving statistics at test, so a score does not depend on the
  other images in the batch. The code never switches BN to inference (``train=True`` always), i.e. batch
  statistics at test: ``bn_test_mode: batch`` (running statistics are left untouched while scoring).
* ``shuffle: true`` (default) reshuffles the training set every epoch (noisy copies stay paired with their
  clean image); the code slices the data in a fixed order (``shuffle: false``), which correlates batches
  when the data set is ordered (e.g. by patient or slice).
* Fixed epoch budget, no test-set selection (the paper's stopping rule is subjective; the code runs 40
  epochs); ``iterations > 0`` replaces it by an iteration budget (smoke runs).
* The code also evaluated the losses after each step with extra training-mode forwards that updated BN
  moving statistics; we log the losses of the steps themselves.

Scaling: both nets are fully convolutional apart from D's last linear layer, so 64/128/256 px need no
structural change (depth stays that of the preset; D's linear input grows: 4x4, 8x8, 16x16 x 8*df).
Images must be square with a side divisible by 16 (paper preset) or 8 (code preset).

Not in the original: ``return_maps`` gives the per-pixel map ``|x - R(x)|`` (ALOCC has no pixel map).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer, check_scorable, cpu_state, keep_bn_stats, train_mode
from anomaly_bench.methods.alocc.loss import add_noise, bce, discriminator_loss, refinement_loss
from anomaly_bench.methods.alocc.torch_model import PRESETS, build_networks
from anomaly_bench.nn.common import map_batches, seed_everything, set_requires_grad
from anomaly_bench.nn.optim import TFRMSprop

NOISE_SEED_OFFSET = 7_919


@register_method("alocc")
class ALOCC(AnomalyMethod):
    """ALOCC (Sabokrou et al., CVPR 2018). See the module docstring for code-faithfulness and deviations."""

    default_train_sets = "healthy"
    # not streamed (issue 24): _noisy draws the whole set's noise from one generator in order, so image i's noise
    # depends on its position in that stream and cannot be drawn for a batch alone without a full-set copy
    streams_images = False
    health_loss = "r_refine"  # its reconstruction/translation term in losses.csv (training-health check)
    defaults = {
        "epochs": 40,
        "iterations": 0,                     # > 0 overrides epochs (one iteration = 1 D step + r_steps R steps)
        "batch_size": 128,
        "lr": 2.0e-3,
        "r_steps": 2,                        # R steps per D step (code; paper: 1)
        "preset": "code",                    # code: df=gf=16, 3 stages; paper: 64..512
        "width": 0,                          # base width (df=gf); 0 = the preset's (16 code, 64 paper)
        "refinement_loss": "code_bce_noisy",  # or paper_mse_clean
        "refinement_weight": None,           # None: 0.2 (r_alpha, code loss) / 0.4 (lambda, paper loss)
        "noise_std": 0.155,
        "noise_per_epoch": False,            # False = authors (noise drawn once before training)
        "shuffle": True,                     # False = authors' fixed order
        "bn_test_mode": "eval",              # batch = authors' code (batch statistics at test)
        "score": "d_r",                      # -logit D(R(x)); d_x = -logit D(x) (paper's OCC1)
        "return_maps": True,                 # |x - R(x)|: NOT in the original
        "score_batch_size": 64,
        "checkpoint_every": 0,
        "log_every": 10,
        "resume_every": 100,
    }
    choices = {"preset": tuple(PRESETS), "refinement_loss": ("code_bce_noisy", "paper_mse_clean"),
               "bn_test_mode": ("eval", "batch"), "score": ("d_r", "d_x")}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        w = self.params["refinement_weight"]
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0):
            raise ConfigError(f"method 'alocc': refinement_weight must be a number >= 0 or null, got {w!r}")
        if self.params["width"] < 0 or self.params["r_steps"] < 1:
            raise ConfigError("method 'alocc': width must be >= 0 (0 = preset) and r_steps >= 1")

    @property
    def refinement_weight(self) -> float:
        w = self.params["refinement_weight"]
        if w is None:
            return 0.2 if self.params["refinement_loss"] == "code_bce_noisy" else 0.4
        return float(w)

    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        c, h, w = image_shape
        preset = self.params["preset"]
        k = 2 ** max(len(PRESETS[preset]["r_enc"]), len(PRESETS[preset]["d"]))
        if h != w or h % k:
            raise ConfigError(f"alocc: preset '{preset}' needs square images with a side divisible by {k}, "
                              f"got {h}x{w}")
        return {"image_shape": tuple(image_shape), "size": h, "in_ch": c, "preset": preset,
                "width": self.params["width"] or PRESETS[preset]["width"]}

    def _build(self, arch: dict) -> None:
        self.arch_ = arch
        r, d = build_networks(arch)
        self.refiner_, self.disc_ = r.to(self.device), d.to(self.device)

    # -- training --------------------------------------------------------------------------------
    def _noisy(self, data: torch.Tensor, epoch: int) -> torch.Tensor:
        key = self.params["seed"] * 1_000_003 + NOISE_SEED_OFFSET + (epoch if self.params["noise_per_epoch"] else 0)
        return add_noise(data, self.params["noise_std"], torch.Generator().manual_seed(key))

    #: scoring-only parameters: a resumed run may change them
    RESUME_FREE = ("bn_test_mode", "score", "return_maps")

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "ALOCC":
        p, dev = self.params, self.device
        gen = seed_everything(p["seed"])
        arch = self._arch(train.image_shape)
        self._build(arch)
        R, D = self.refiner_.train(), self.disc_.train()
        self._opt_d = TFRMSprop(D.parameters(), lr=p["lr"])
        self._opt_r = TFRMSprop(R.parameters(), lr=p["lr"])
        self._data = train.healthy.to(dev)
        self._sampler = BatchSampler(len(self._data), p["batch_size"], gen, streams=1, shuffle=p["shuffle"])
        self._noisy_epoch, self._noisy_data = -1, None
        total = p["iterations"] if p["iterations"] > 0 else p["epochs"] * self._sampler.batches_per_epoch
        state = {"refiner": R, "disc": D, "opt_r": self._opt_r, "opt_d": self._opt_d}
        trainer = Trainer(self, ctx, total=total, arch=arch, samplers={"x": self._sampler}, state=state,
                          resume_free=self.RESUME_FREE,
                          release=("_opt_d", "_opt_r", "_data", "_sampler", "_noisy_epoch", "_noisy_data"))
        trainer.run(self.training_step)
        R.eval()
        D.eval()
        self.fitted_ = True
        return self

    def training_step(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One D step and ``r_steps`` R steps on the clean batch ``data[idx]`` and its noisy copy."""
        p, R, D, data = self.params, self.refiner_, self.disc_, self._data
        epoch = self._sampler.epoch if p["noise_per_epoch"] else 0
        if epoch != self._noisy_epoch:
            self._noisy_data, self._noisy_epoch = self._noisy(data, epoch), epoch
        idx = idx.to(data.device)
        x, x_noisy = data[idx], self._noisy_data[idx]

        # D step: real clean batch vs refined noisy batch (R in train mode, its BN statistics update)
        with torch.no_grad():
            refined = R(x_noisy)
        d_loss = discriminator_loss(D(x), D(refined))
        self._opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self._opt_d.step()

        # R steps (the code runs g_optim twice on the same noisy batch)
        set_requires_grad(D, False)
        for _ in range(p["r_steps"]):
            refined = R(x_noisy)
            adv = bce(D(refined), 1.0)
            l_r = refinement_loss(p["refinement_loss"], refined, x_noisy, x)
            r_loss = adv + self.refinement_weight * l_r
            self._opt_r.zero_grad(set_to_none=True)
            r_loss.backward()
            self._opt_r.step()
        set_requires_grad(D, True)
        return {"d_loss": d_loss, "r_loss": r_loss, "r_adv": adv, "r_refine": l_r}

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _score_batch(self, x: torch.Tensor):
        refined = self.refiner_(x)
        logit = self.disc_(refined if self.params["score"] == "d_r" else x)
        return -logit, (x - refined).abs()[:, 0], refined[:, 0]

    def score(self, images: torch.Tensor) -> ScoreResult:
        check_scorable(self, images)
        nets = (self.refiner_, self.disc_)
        batch_stats = self.params["bn_test_mode"] == "batch"
        # 'batch': train-mode BN uses batch statistics (authors' code), running ones untouched; no dropout in ALOCC
        with train_mode(nets, batch_stats), keep_bn_stats(*nets) if batch_stats else contextlib.nullcontext():
            scores, maps, recs = map_batches(self._score_batch, images, self.params["score_batch_size"], self.device)
        return ScoreResult(scores.numpy(), maps.numpy() if self.params["return_maps"] else None, recs.numpy())

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"arch": dict(self.arch_), "refiner": cpu_state(self.refiner_), "disc": cpu_state(self.disc_)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build({**state["arch"], "image_shape": tuple(state["arch"]["image_shape"])})
        self.refiner_.load_state_dict(state["refiner"])
        self.disc_.load_state_dict(state["disc"])
        self.refiner_.eval()
        self.disc_.eval()
        self.fitted_ = True
