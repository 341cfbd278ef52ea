"""ALAD: Adversarially Learned Anomaly Detection (Zenati et al., ICDM 2018), from scratch in PyTorch.

Authors' code: houssamzenati/Adversarially-Learned-Anomaly-Detection@1f1c3109 (TensorFlow 1),
``alad/cifar10_utilities.py`` (networks), ``alad/run.py`` (losses, schedule, scores), ``utils/sn.py``.

What follows the authors' code
------------------------------
* Networks (CIFAR-10 variant, generalised, see "Scaling"): encoder E(x)->z (latent 100), generator G(z)->x,
  D_xz(x, z), D_xx(x, x'), D_zz(z, z'). Weights N(0, 0.01), zero biases, LeakyReLU 0.2, dropout 0.2 in the
  discriminators, BatchNorm = ``tf.layers.batch_normalization`` -> ``BatchNorm2d(eps=1e-3, momentum=0.01)``.
* Spectral norm (``--sn``, which the authors always use for ALAD) on exactly the layers the code builds
  through ``sn``: E's stride-2 convs, D_xz's x-branch, z-branch and joint hidden layer, D_xx's convs and
  D_zz's two hidden layers; never on a network's last layer and never on G. One power iteration with a
  persistent ``u`` (``torch.nn.utils.parametrizations.spectral_norm``).
* Losses (sigmoid BCE with logits, batch means): D_xz ``BCE(D(x,E(x)),1)+BCE(D(G(z),z),0)``; D_xx
  ``BCE(D(x,x),1)+BCE(D(x,G(E(x))),0)``; D_zz ``BCE(D(z,z),1)+BCE(D(z,E(G(z))),0)``. G/E: ``BCE(D_xz(G(z),z),1)``
  / ``BCE(D_xz(x,E(x)),0)`` plus the label-flipped cycle terms ``cost_x = BCE(D_xx(x,x),0)+BCE(D_xx(x,x^),1)``
  and (``enable_dzz``, the authors' setting) ``cost_z`` likewise. D_zz is trained every step regardless.
* Optimisation: 5 separate Adam(2e-4, betas (0.5, 0.999)); per iteration one step of all three Ds on
  batch ``trainx[t]`` with fresh z, then one G+E step on ``trainx_copy[t]`` (a separately shuffled copy of
  the training set) with fresh z. G/E are stepped from one backward of ``L_G + L_E`` (the adversarial term
  of each does not depend on the other network, so the gradients equal the authors' two ops).
  BN moving statistics of a network are updated only by its own optimiser step (TF ``UPDATE_OPS``
  tied per network): E/G statistics are frozen during the D step, D_xz's during the G/E step.
* EMA (decay 0.999) of the weights; scoring uses the EMA weights of E, G and D_xx, in eval mode (BN
  moving statistics, dropout off). Buffers (BN statistics, spectral-norm ``u``/``v``) are copied from the
  live networks, like TF's non-trainable variables.
* Score (``score: fm``, the paper's): ``|| f_xx(x, x) - f_xx(x, G(E(x))) ||_1`` on D_xx's flattened
  intermediate layer. ``ch``, ``l1``, ``l2`` (the code's other scores) are available.
* ``dxx_concat: height`` (default) reproduces the code: ``tf.concat([x, x'], axis=1)`` in NHWC stacks the two
  images vertically. ``channel`` is the "natural" channel concat (a deviation).

Scaling (not in the authors' repository: they only have 32x32 nets)
-------------------------------------------------------------------
One stride-2 stage per doubling, keeping a 4x4 bottleneck: ``n = log2(H/4)`` stages (3 at 32 px, 4 at 64,
5 at 128, 6 at 256). Stage widths double up to ``channels`` at the 4x4 stage: ``channels / 2**(n-1-i)``
(512 -> [128, 256, 512] at 32 px = the authors' widths; [64, 128, 256, 512] at 64 px). G mirrors E
(VALID 4x4 transposed conv from 1x1, then ``n`` stride-2 transposed convs, 1 output channel, tanh).
D_xz's x-branch uses E's widths; its z-branch width is ``channels`` and its joint hidden layer
``2 * channels`` (512 / 1024 for the default, as in the code). D_xx's first conv has ``channels/8`` filters
(64), doubling per conv up to ``channels``; with ``dxx_extra_convs: true`` (default, recommended in the spec)
it has ``2 + log2(H/32)`` k5 s2 convs so the feature map stays 16x8 (height concat) as for CIFAR; with
``false`` it keeps the code's two convs (a larger feature vector). Images must be square, a power of 2,
at least 32 px.

Deviations (with reasons)
-------------------------
* Fixed budget (``epochs`` or ``iterations``) instead of the code's early stopping on a validation split,
  which also tested the last (not the best) weights; model selection is the harness's job (AUCp).
* Spectral norm at test: torch's parametrisation does no power iteration in eval mode; TF's ``sn`` also ran
  one at test time (a tiny difference in sigma).
* BN moving statistics: in TF the EMA-weight test graph's BN update ops also sit in ``UPDATE_OPS`` and ran
  in each G/E step; here only the live forward passes update them.
* EMA is kept only for E, G and D_xx (the networks scoring uses), not for D_xz and D_zz.
* ``return_maps``: the per-pixel map ``|x - G(E(x))|`` (EMA weights) is **not in the original** (ALAD has no
  pixel map); the image score is unaffected.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer, check_scorable, cpu_state, keep_bn_stats, train_mode
from anomaly_bench.methods.alad.loss import discriminator_losses, fm_score, generator_encoder_losses
from anomaly_bench.methods.alad.torch_model import build_networks, pow2_size
from anomaly_bench.nn.common import EMA, map_batches, seed_everything, set_requires_grad


def step_logits(nets: dict[str, nn.Module], x: torch.Tensor, z: torch.Tensor, step: str) -> tuple[torch.Tensor, ...]:
    """The forward of the D step (``step="d"``) or of the G/E step (``"ge"``): the logits of D_xz(x,E(x)),
    D_xz(G(z),z), D_xx(x,x), D_xx(x,G(E(x))), D_zz(z,z), D_zz(z,E(G(z))), computed in this order (dropout
    draws). BN moving statistics are updated only by the networks being stepped (TF ``UPDATE_OPS`` per
    network): in the D step E/G run in train mode without gradients or statistic updates; in the G/E step
    D_xz runs without statistic updates."""
    E, G, Dxz, Dxx, Dzz = (nets[k] for k in ("encoder", "generator", "dxz", "dxx", "dzz"))
    d_step = step == "d"
    with torch.no_grad() if d_step else contextlib.nullcontext(), keep_bn_stats(*((E, G) if d_step else ())):
        z_enc = E(x)
        x_gen = G(z)
        x_rec = G(z_enc)
        z_rec = E(x_gen)
    with keep_bn_stats(*(() if d_step else (Dxz,))):
        l_enc, _ = Dxz(x, z_enc)
        l_gen, _ = Dxz(x_gen, z)
    xr, _ = Dxx(x, x)
    xf, _ = Dxx(x, x_rec)
    zr, _ = Dzz(z, z)
    zf, _ = Dzz(z, z_rec)
    return l_enc, l_gen, xr, xf, zr, zf


@register_method("alad")
class ALAD(AnomalyMethod):
    """ALAD (Zenati et al., ICDM 2018). See the module docstring for code-faithfulness and deviations."""
    streams_images = True  # fit reads its training images by index only (issue 24)

    default_train_sets = "healthy"
    health_loss = "cost_x"  # training-health check: D_xx's cycle-consistency term (losses.csv)
    # G(E(x)) of a BiGAN is a semantic reconstruction, not trained to be pixel-faithful (Donahue et al. 2017; ALAD
    # scores feature distances for that reason): its healthy MAE ratio is recorded and shown, not flagged.
    health_judge_mae = False
    defaults = {
        "epochs": 100,            # not published (code: --nb_epochs, default 0, + early stopping); fixed budget
        "iterations": 0,          # > 0 overrides epochs (one iteration = one D step + one G/E step)
        "batch_size": 32,
        "lr": 2.0e-4,
        "beta1": 0.5,
        "beta2": 0.999,
        "latent_dim": 100,
        "channels": 512,          # width of the 4x4 stage; 512 = authors
        "spectral_norm": True,    # authors: always --sn for ALAD
        "enable_dzz": True,       # authors: --enable_dzz
        "ema_decay": 0.999,
        "dxx_concat": "height",   # height = authors' code (NHWC axis 1); channel = deviation
        "dxx_extra_convs": True,  # one more D_xx conv per doubling above 32 px (spec recommendation)
        "score": "fm",
        "fm_degree": 1,           # --d 1: L1 feature matching
        "return_maps": True,      # |x - G(E(x))|: NOT in the original
        "score_batch_size": 64,
        "checkpoint_every": 0,
        "log_every": 50,
        "resume_every": 500,
    }
    choices = {"dxx_concat": ("height", "channel"), "score": ("fm", "ch", "l1", "l2"), "fm_degree": (1, 2)}

    # -- building --------------------------------------------------------------------------------
    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        size = pow2_size(image_shape, 32, "alad")
        p = self.params
        return {"image_shape": tuple(image_shape), "size": size, "in_ch": image_shape[0],
                "latent_dim": p["latent_dim"], "channels": p["channels"], "spectral_norm": p["spectral_norm"],
                "dxx_concat": p["dxx_concat"], "dxx_extra_convs": p["dxx_extra_convs"]}

    def _build_scoring(self, arch: dict) -> None:
        nets = build_networks(arch)
        self.arch_ = arch
        self.encoder_ = nets["encoder"].to(self.device).eval()
        self.generator_ = nets["generator"].to(self.device).eval()
        self.dxx_ = nets["dxx"].to(self.device).eval()

    # -- training --------------------------------------------------------------------------------
    #: scoring-only parameters: a resumed run may change them
    RESUME_FREE = ("score", "fm_degree", "return_maps")

    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "ALAD":
        p, dev = self.params, self.device
        gen = seed_everything(p["seed"])
        self._zgen = torch.Generator().manual_seed(p["seed"] * 1_000_003 + 17)
        arch = self._arch(train.image_shape)
        self._nets = nets = {k: v.to(dev).train() for k, v in build_networks(arch).items()}
        self._opts = {k: torch.optim.Adam(v.parameters(), lr=p["lr"], betas=(p["beta1"], p["beta2"]), eps=1e-8)
                      for k, v in nets.items()}
        self._emas = {k: EMA(nets[k], p["ema_decay"]) for k in ("encoder", "generator", "dxx")}
        data = train.healthy.to(dev)
        sampler = BatchSampler(len(data), p["batch_size"], gen, streams=2, data=data)
        total = p["iterations"] if p["iterations"] > 0 else p["epochs"] * sampler.batches_per_epoch
        self._set_scoring_from(arch, self._emas)
        state = {"zgen": self._zgen, **nets, **{f"opt_{k}": v for k, v in self._opts.items()},
                 **{f"ema_{k}": v.shadow for k, v in self._emas.items()}}
        Trainer(self, ctx, total=total, arch=arch, samplers={"x": sampler}, state=state, resume_free=self.RESUME_FREE,
                release=("_zgen", "_nets", "_opts", "_emas")).run(self.training_step)
        self.fitted_ = True
        return self

    def training_step(self, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """One D step on batch ``trainx[t]`` and one G/E step on ``trainx_copy[t]`` (a separate shuffle), each with
        fresh z, then the EMA update."""
        x_d, x_g = batch
        nets, opts, p = self._nets, self._opts, self.params
        Dxz, Dxx, Dzz = (nets[k] for k in ("dxz", "dxx", "dzz"))

        def z_batch(n: int) -> torch.Tensor:
            return torch.randn(n, p["latent_dim"], generator=self._zgen).to(x_d.device)

        # (1) discriminators: batch trainx[t], fresh z; E/G forward in train mode without stat updates
        dl = discriminator_losses(*step_logits(nets, x_d, z_batch(len(x_d)), "d"))
        for k in ("dxz", "dxx", "dzz"):
            opts[k].zero_grad(set_to_none=True)
        (dl["dis_xz"] + dl["dis_xx"] + dl["dis_zz"]).backward()
        for k in ("dxz", "dxx", "dzz"):
            opts[k].step()

        # (2) generator + encoder: batch trainx_copy[t] (separate shuffle), fresh z
        for d in (Dxz, Dxx, Dzz):
            set_requires_grad(d, False)
        gl = generator_encoder_losses(*step_logits(nets, x_g, z_batch(len(x_g)), "ge"), p["enable_dzz"])
        opts["encoder"].zero_grad(set_to_none=True)
        opts["generator"].zero_grad(set_to_none=True)
        # one backward of L_G + L_E (shared cycle term once): G gets dL_G/dG, E gets dL_E/dE, as in the code
        (gl["gen_xz"] + gl["enc_xz"] + gl["cycle"]).backward()
        opts["encoder"].step()
        opts["generator"].step()
        for d in (Dxz, Dxx, Dzz):
            set_requires_grad(d, True)
        for k, ema in self._emas.items():
            ema.update(nets[k])
        return {**dl, "gen": gl["gen"], "enc": gl["enc"], "cost_x": gl["cost_x"]}

    def _set_scoring_from(self, arch: dict, emas: dict[str, EMA]) -> None:
        """Scoring networks = the EMA shadows (shared objects, so state_dict() during fit is current)."""
        self.arch_ = arch
        self.encoder_, self.generator_, self.dxx_ = (emas[k].shadow for k in ("encoder", "generator", "dxx"))

    # -- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _score_batch(self, x: torch.Tensor):
        x_rec = self.generator_(self.encoder_(x))
        logit_fake, f_fake = self.dxx_(x, x_rec)
        _, f_real = self.dxx_(x, x)
        kind = self.params["score"]
        if kind == "fm":
            s = fm_score(f_real, f_fake, self.params["fm_degree"])
        elif kind == "ch":
            s = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake), reduction="none")
        else:
            s = torch.linalg.vector_norm((x - x_rec).flatten(1), ord=1 if kind == "l1" else 2, dim=1)
        return s, (x - x_rec).abs()[:, 0], x_rec[:, 0]

    def score(self, images: torch.Tensor) -> ScoreResult:
        check_scorable(self, images)
        with train_mode((self.encoder_, self.generator_, self.dxx_), False):
            scores, maps, recs = map_batches(self._score_batch, images, self.params["score_batch_size"], self.device)
        return ScoreResult(scores.numpy(), maps.numpy() if self.params["return_maps"] else None, recs.numpy())

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"arch": dict(self.arch_), "encoder": cpu_state(self.encoder_),
                "generator": cpu_state(self.generator_), "dxx": cpu_state(self.dxx_)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build_scoring({**state["arch"], "image_shape": tuple(state["arch"]["image_shape"])})
        self.encoder_.load_state_dict(state["encoder"])
        self.generator_.load_state_dict(state["generator"])
        self.dxx_.load_state_dict(state["dxx"])
        self.fitted_ = True
