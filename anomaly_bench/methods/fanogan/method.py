"""f-AnoGAN (Schlegl et al., Medical Image Analysis 2019), written from scratch in PyTorch.

Authors' code: tSchlegl/f-AnoGAN@35b1de9 (TF1, 64x64x1 only): ``wgangp_64x64.py`` (stage 1),
``z_encoding_izif.py`` (stage 2), ``anomaly_detection.py`` (score). Spec: baselines.md §3.

What follows the authors' code
------------------------------
* Networks: Gulrajani's "Good" ResNet (the authors' ``GoodGenerator``/``GoodDiscriminator``/``Encoder``).
  Residual blocks ``shortcut + conv2(relu(norm2(conv1(relu(norm1(x))))))``; ``down`` = conv then 2x2 mean
  pool (shortcut: mean pool then 1x1 conv); ``up`` = nearest x2 (the authors' tile + depth_to_space is
  exactly nearest) then conv. The critic normalises per sample over (C, H, W) with per-channel affine
  (TF ``Layernorm``) = ``nn.GroupNorm(1, C)`` -- never BatchNorm. G and E use TF batch norm
  (``BatchNorm2d(eps=1e-3, momentum=0.01)``). Init as tflib: conv/linear weights uniform
  ±sqrt(3)·σ, σ = sqrt(4/(fan_in+fan_out)) ("he_init") or sqrt(2/(fan_in+fan_out)) (input convs,
  shortcuts, linears), biases 0. Feature vector f(x) = flattened last critic block (8·dim·4·4).
* Stage 1, WGAN-GP: L_D = mean D(G(z)) - mean D(x) + λ·mean((‖∇D(x̃)‖₂-1)²), x̃ = x + α(G(z)-x),
  α ~ U(0,1) per sample, λ = 10; L_G = -mean D(G(z)); z ~ N(0, I_128); Adam 1e-4, β = (0, 0.9);
  5 critic steps (each with a new real batch and new noise) per generator step. During critic steps G
  runs with batch statistics but its BN running statistics are not updated (in TF the update ops are
  attached to the generator train op only).
* Stage 2, izi_f encoder: G (eval mode, BN running stats) and D frozen, E in train mode;
  L = MSE(x, G(E(x))) + κ·MSE(f(x), f(G(E(x)))), κ = 1; TF-semantics RMSprop lr 5e-5
  (:class:`anomaly_bench.nn.optim.TFRMSprop`); 50k iterations; E's output is linear -> tanh
  (``Z_REG_TYPE='tanh_fc'``, the paper's version; ``z_reg: none`` gives the linear variant).
* Random horizontal flip p = 0.5 of real training images in both stages (``tflib/img_loader.py``);
  ``hflip: false`` turns it off.
* Score (``anomaly_detection.py``, ``dual_iloss=True``): per image
  A(x) = mean_pixels (x - G(E(x)))² + κ·mean_features (f(x) - f(G(E(x))))², all nets in inference mode.
  Map: |x - G(E(x))| (the paper's residual image; the authors' code computes none).

Deviations (and why)
--------------------
* Budget: the authors count *critic* steps over ``TRAIN_EPOCHS = 7`` passes of the data, which gives
  very few generator updates on small medical sets. We count generator iterations (``iterations``,
  default 100k as the dbbbbm PyTorch port). ``wgan_epochs > 0`` restores the authors' rule:
  ``ceil(wgan_epochs · (N // batch_size - critic_iters) / critic_iters)`` generator iterations.
* Their loader drops/duplicates images at batch boundaries and leaves up to 63 test images unscored;
  we shuffle every epoch, drop the last incomplete training batch, and score every test image.
* Sizes: the code is 64x64 only. Scaling rule (baselines.md §3.1): keep the 4x4 base and add one
  residual block per doubling, i.e. ``log2(size) - 2`` blocks; critic/encoder widths
  ``dim·[1, 2, 4, 8, 8, ...]`` (capped at 8·dim), generator the mirror image. f(x) stays 8·dim·16-d.
  Sizes must be powers of two ≥ 8 (64 → 4 blocks as in the paper, 128 → 5, 256 → 6).
* Label-free model selection: G is fixed in stage 2, so selection checkpoints (``checkpoint_every``)
  are written during the encoder stage only, numbered by the global step (``iterations`` + encoder step).

Training log (``losses.csv``) has one column set for both stages (``stage`` = 1 or 2); the columns
of the stage not running are written as 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer, check_fitted, cpu_state
from anomaly_bench.methods.fanogan.loss import gradient_penalty, izif_per_sample
from anomaly_bench.methods.fanogan.torch_model import Critic, Encoder, Generator, frozen_bn_stats, n_resample_blocks
from anomaly_bench.nn.common import map_batches, seed_everything, set_requires_grad
from anomaly_bench.nn.optim import TFRMSprop

#: the columns of losses.csv (those of the stage not running are 0)
LOSS_KEYS = ("stage", "d_loss", "g_loss", "gp", "wdist", "enc_loss", "enc_img", "enc_feat")


@register_method("fanogan")
class FAnoGAN(AnomalyMethod):
    """f-AnoGAN: WGAN-GP (ResNet) + izi_f encoder; score = pixel MSE + κ·critic-feature MSE.

    See the module docstring for what follows tSchlegl/f-AnoGAN and where (and why) we deviate.
    """
    streams_images = True  # fit reads its training images by index only (issue 24)

    default_train_sets = "healthy"
    health_loss = "enc_loss"  # its reconstruction/translation term in losses.csv (training-health check)
    health_loss_rows = {"stage": 2.0}  # the encoder stage
    health_critic_rows = {"stage": 1.0}  # the WGAN stage (wdist)
    defaults = {
        "dim": 64,                  # model width (authors' DIM); smaller for CPU
        "z_dim": 128,               # ZDIM
        "batch_size": 64,
        "iterations": 100000,       # WGAN-GP generator iterations (dbbbbm); see wgan_epochs
        "wgan_epochs": 0,           # >0: authors' budget rule (epochs of critic steps), overrides iterations
        "critic_iters": 5,
        "gp_lambda": 10.0,
        "lr": 1.0e-4,
        "beta1": 0.0,
        "beta2": 0.9,
        "encoder_iterations": 50000,
        "encoder_lr": 5.0e-5,       # TF RMSprop
        "kappa": 1.0,
        "z_reg": "tanh_fc",
        "hflip": True,              # authors' loader: random horizontal flip p=0.5, both stages
        "score_batch_size": 64,
        "checkpoint_every": 0,      # selection checkpoints during the encoder stage (encoder steps)
        "log_every": 100,
        "resume_every": 1000,       # steps between resume states (0 = only at the stage change and the end)
    }
    choices = {"z_reg": ("tanh_fc", "none")}

    # -- construction -------------------------------------------------------------------------------
    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        c, h, w = image_shape
        if h != w:
            raise ConfigError(f"fanogan: images must be square, got {h}x{w}")
        n_resample_blocks(h)
        return {"channels": int(c), "size": int(h), "dim": self.params["dim"], "z_dim": self.params["z_dim"],
                "z_reg": self.params["z_reg"]}

    def _build(self, arch: dict[str, Any]) -> None:
        c, s, d, z = arch["channels"], arch["size"], arch["dim"], arch["z_dim"]
        self.arch_ = dict(arch)
        self.G = Generator(c, s, d, z).to(self.device)
        self.D = Critic(c, s, d).to(self.device)
        self.E = Encoder(c, s, d, z, arch["z_reg"]).to(self.device)

    def generator_iterations(self, n_train: int) -> int:
        p = self.params
        if p["wgan_epochs"] > 0:
            per_epoch = max(n_train // min(p["batch_size"], n_train) - p["critic_iters"], 1)
            return math.ceil(p["wgan_epochs"] * per_epoch / p["critic_iters"])
        return p["iterations"]

    # -- training -----------------------------------------------------------------------------------
    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.params["hflip"]:
            return x
        flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)

    def _critic_step(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        p, dev, bs = self.params, x.device, len(x)
        z = torch.randn(bs, p["z_dim"], generator=gen).to(dev)
        alpha = torch.rand(bs, 1, 1, 1, generator=gen).to(dev)
        with torch.no_grad(), frozen_bn_stats(self.G):
            fake = self.G(z)
        out = self.D(torch.cat([x, fake]))
        d_real, d_fake = out[:bs].mean(), out[bs:].mean()
        gp = gradient_penalty(self.D, x, fake, alpha)
        loss = d_fake - d_real + p["gp_lambda"] * gp
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.detach(), gp.detach(), (d_real - d_fake).detach()

    def _generator_step(self, bs: int, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(bs, self.params["z_dim"], generator=gen).to(self.device)
        set_requires_grad(self.D, False)
        loss = -self.D(self.G(z)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        set_requires_grad(self.D, True)
        return loss.detach()

    def _encoder_step(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            f_x = self.D.features(x)
        x_rec = self.G(self.E(x))
        total, pix, feat = izif_per_sample(x, x_rec, f_x, self.D.features(x_rec), self.params["kappa"])
        loss = total.mean()
        self.opt_e.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_e.step()
        return loss.detach(), pix.mean().detach(), feat.mean().detach()

    def _set_stage_modes(self, stage: int) -> None:
        if stage == 1:
            self.G.train()
            self.D.train()
            self.E.train()
            set_requires_grad(self.G, True)
            set_requires_grad(self.D, True)
        else:  # encoder stage: G/D frozen, G uses its BN running statistics
            self.G.eval()
            self.D.eval()
            self.E.train()
            set_requires_grad(self.G, False)
            set_requires_grad(self.D, False)

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "FAnoGAN":
        p, dev = self.params, self.device
        for k in ("batch_size", "critic_iters"):
            if p[k] < 1:
                raise ConfigError(f"fanogan: {k} must be >= 1, got {p[k]}")
        self._gen = gen = seed_everything(p["seed"])
        self._build(self._arch(train.image_shape))
        data = train.healthy.to(dev) if dev.type != "cpu" else train.healthy
        self._sampler = BatchSampler(len(data), p["batch_size"], gen, data=data)
        self._g_iters = g_iters = self.generator_iterations(len(data))
        lr, betas = float(p["lr"]), (float(p["beta1"]), float(p["beta2"]))  # YAML may give ints
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=lr, betas=betas)
        self.opt_e = TFRMSprop(self.E.parameters(), lr=float(p["encoder_lr"]))
        state = {"G": self.G, "D": self.D, "E": self.E, "opt_g": self.opt_g, "opt_d": self.opt_d, "opt_e": self.opt_e}
        # G is fixed in stage 2: selection checkpoints during the encoder stage only, counted in encoder steps
        Trainer(self, ctx, total=g_iters + p["encoder_iterations"], arch=self.arch_, samplers={"x": self._sampler},
                state=state, boundaries=(g_iters,), checkpoint_index=lambda it: it - g_iters if it > g_iters else None,
                release=("_gen", "_sampler", "_g_iters")).run(self.training_step)
        self.G.eval()
        self.D.eval()
        self.E.eval()
        self.fitted_ = True
        return self

    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor | float]:
        """Stage 1 (``iterations`` steps): ``critic_iters`` critic steps, each on a new real batch (``x``, then
        batches drawn here), then one generator step. Stage 2: one encoder step on ``x``. Returns every column of
        ``LOSS_KEYS`` (those of the stage not running as 0)."""
        stage = 1 if self._trainer.iteration < self._g_iters else 2
        self._set_stage_modes(stage)
        row: dict[str, torch.Tensor | float] = {k: 0.0 for k in LOSS_KEYS}
        row["stage"] = float(stage)
        if stage == 1:
            for i in range(self.params["critic_iters"]):
                batch = x if i == 0 else self._sampler.next_batch()
                d_loss, gp, wdist = self._critic_step(self._augment(batch, self._gen), self._gen)
            g_loss = self._generator_step(self._sampler.bs, self._gen)
            row.update(d_loss=d_loss, g_loss=g_loss, gp=gp, wdist=wdist)
        else:
            e_loss, e_img, e_feat = self._encoder_step(self._augment(x, self._gen))
            row.update(enc_loss=e_loss, enc_img=e_img, enc_feat=e_feat)
        return row

    # -- scoring ------------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(score, |x - G(E(x))|, G(E(x))) for a device batch, all nets in inference mode."""
        x_rec = self.G(self.E(x))
        total, _, _ = izif_per_sample(x, x_rec, self.D.features(x), self.D.features(x_rec), self.params["kappa"])
        return total, (x - x_rec).abs()[:, 0], x_rec[:, 0]

    def score(self, images: torch.Tensor) -> ScoreResult:
        check_fitted(self, "G")
        for m in (self.G, self.D, self.E):
            m.eval()
        scores, maps, recs = map_batches(self.reconstruct, images, self.params["score_batch_size"], self.device)
        return ScoreResult(scores.numpy(), maps.numpy(), recs.numpy())

    # -- persistence --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        check_fitted(self, "G")
        return {"arch": dict(self.arch_), "G": cpu_state(self.G), "D": cpu_state(self.D), "E": cpu_state(self.E)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build(state["arch"])
        for name in ("G", "D", "E"):
            getattr(self, name).load_state_dict(state[name])
            getattr(self, name).eval()
        self.fitted_ = True
