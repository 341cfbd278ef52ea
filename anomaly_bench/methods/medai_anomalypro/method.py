"""MedAI AnomalyPro (= HealthyGAN): one-directional, mask-based image-to-image translation to "healthy".

Paper: Kumar et al., "MedAI AnomalyPro: Advancing Unsupervised Anomaly Detection in Medical Imaging" (the seed
paper); the method, its equations and losses are those of HealthyGAN (Siddiquee et al., SASHIMI 2022; official
code github mahfuzmohammad/HealthyGAN, ``model.py``/``solver.py``). The ``head: additive`` variant is Brainomaly
(WACV 2024, github mahfuzmohammad/Brainomaly).

What follows the authors' code
  * StarGAN-style generator (7x7 conv, 2 strided 4x4 down convs, residual bottleneck, 2 transposed 4x4 up convs,
    7x7 conv to C image channels + 1 mask channel, no biases, InstanceNorm(affine, track_running_stats)) and a
    PatchGAN critic (strided 4x4 convs + LeakyReLU(0.01), 3x3 conv to 1 channel, loss on the mean of the map).
  * Eq. 2 ``B0 = B_int*M + A*(1-M)``, Eq. 1 ``A0 = A*M + B_int*(1-M)``, ``B_int = tanh``, ``M = (tanh+1)/2``.
  * WGAN-GP critic (lambda_gp 10, alpha ~ U(0,1) per sample between a B image and B0 of an A image), generator
    every ``n_critic`` = 2 critic steps with adv(A) + adv(B) + id + rec + 0.1 * focus loss (0.5 A-mask + 0.5
    B-mask), Adam 1e-4 (0.5, 0.999), batch 16, random horizontal flips (the authors' training transform).
  * Score: mean over pixels of ``|x - B0(x)| / 2``; map: ``|x - B0(x)| / 2``; reconstruction: ``B0(x)``.
  * At scoring the InstanceNorms use each image's own statistics: the authors never call ``G.eval()`` in their
    test code, so their released scores use instance statistics. ``norm_at_score: running`` uses the tracked
    running statistics instead (PyTorch's eval semantics).

Where we deviate, and the flag that gives the authors' behaviour
  * Grayscale images are processed with C = 1 channel; the authors convert to RGB (3 equal channels).
    ``replicate_rgb: true`` feeds 3 replicated channels and averages the 3 output channels for maps/scores.
  * Learning-rate decay: the authors' StarGAN loop subtracts ``lr/num_iters_decay`` every ``lr_update_step``
    (1000) iterations, so over the last 100k iterations the rate only falls by 0.1 % (a StarGAN quirk). The paper
    and the reference say "decays linearly to 0"; ``lr_decay: linear`` (default) does that per iteration,
    ``lr_decay: stargan`` reproduces the authors' code exactly.
  * Sets A and B are sampled independently (two shuffled streams), where the authors' loader pairs
    ``A[i % |A|]`` with ``B[i % |B|]`` in one shuffled index; the batch size is ``min(batch, |A|, |B|)``.
  * Critic depth: the authors fix 6 strided convs (at 256 px a 4x4 patch map). ``critic_layers: 0`` picks
    ``floor(log2(size)) - 2`` capped at 6, so the map stays 4 px at any power-of-two size (6 at 256 px).

Speed: the training step (:mod:`anomaly_bench.methods.medai_anomalypro.train_step`) is the authors' algorithm in fewer
passes; its docstring says how, and what it measured.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer, cpu_copy
from anomaly_bench.methods.medai_anomalypro.loss import anomaly_map
from anomaly_bench.methods.medai_anomalypro.torch_model import (
    GENERATOR_TAIL,
    Critic,
    Generator,
    additive_translate,
    auto_critic_layers,
    compose_healthy,
    resolve_layout,
    split_head,
)
from anomaly_bench.methods.medai_anomalypro.train_step import AnomalyProTrainer, lr_factor
from anomaly_bench.nn.common import at_least_fp32, map_batches, seed_everything

#: a final mean mask above this on both sets is reported as saturated (see MedAIAnomalyPro._check_mask)
MASK_SATURATED = 0.95
#: a final mean D(fake) - D(real) above this is reported as a critic behind its generator (a constant critic
#: scores 0, an up-to-date WGAN critic >= 0; the margin ignores log-window noise). See MedAIAnomalyPro._check_critic
CRITIC_BEHIND = 0.1


class MissingMixedSetError(ConfigError, ValueError):
    """MedAI AnomalyPro needs the unannotated mixed set A (``train.mixed``)."""


@register_method("medai_anomalypro")
class MedAIAnomalyPro(AnomalyMethod):
    """MedAI AnomalyPro (HealthyGAN; Brainomaly with ``head: additive``). See the module docstring for what follows
    the authors' code, where we deviate, and the flags offering the authors' behaviour."""
    streams_images = True  # fit reads its training images by index only (issue 24)

    default_train_sets = "mixed+healthy"
    # training-health check: the identity error |x_B - B_int(x_B)| (both heads log it), the translation the
    # generator is trained to do on healthy images. Not g_rec = mean |(1 - M)(x_A - B_int)|: it goes to 0 whenever
    # the mask saturates at 1 and then measures nothing (cpu profile, brain_tumor_mri seed 0: g_rec 4.6e-4 at
    # iteration 10,000 and still "falling" 14 % over the last 20 % while g_id was flat at 0.14).
    health_loss = "g_id"
    defaults = {
        # schedule (HealthyGAN train_covid.sh / main.py)
        "iterations": 400000, "batch_size": 16, "g_lr": 1.0e-4, "d_lr": 1.0e-4, "beta1": 0.5, "beta2": 0.999,
        "n_critic": 2, "lr_decay_iters": 100000, "lr_decay": "linear", "lr_update_step": 1000,
        "random_flip": True,
        # losses
        "lambda_gp": 10.0, "lambda_id": 1.0, "lambda_rec": 1.0, "lambda_mask": 0.1, "lambda_msmall": 1.0,
        "lambda_mzerone": 1.0, "mask_eps": 0.01,
        # networks
        "head": "mask", "g_conv_dim": 64, "g_repeat_num": 6, "d_conv_dim": 64, "critic_layers": 0,
        "replicate_rgb": False, "norm_at_score": "instance", "norm_impl": "auto",
        # bookkeeping
        "checkpoint_every": 10000, "resume_every": 5000, "log_every": 100, "score_batch_size": 32,
        # speed (act on CUDA only, except compile)
        "amp": True, "channels_last": "auto", "compile": False, "data_on_device_mb": 4096,
    }
    choices = {"head": ("mask", "additive"), "lr_decay": ("linear", "stargan"),
               "norm_at_score": ("instance", "running"), "norm_impl": ("auto", "torch", "group", "fused"),
               "channels_last": ("auto", "all", "tail", "head", "none")}

    #: parameters that may differ between an interrupted run and its resumption
    RESUME_FREE = ("device", "compile", "log_every", "resume_every", "checkpoint_every", "score_batch_size",
                   "data_on_device_mb", "amp", "channels_last", "norm_impl")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        for k in ("iterations", "batch_size", "n_critic", "g_conv_dim", "d_conv_dim", "log_every",
                  "score_batch_size", "lr_update_step"):
            if p[k] < 1:
                raise ConfigError(f"method 'medai_anomalypro': parameter '{k}' must be >= 1, got {p[k]}")
        for k in ("critic_layers", "g_repeat_num", "checkpoint_every", "resume_every", "lr_decay_iters"):
            if p[k] < 0:
                raise ConfigError(f"method 'medai_anomalypro': parameter '{k}' must be >= 0, got {p[k]}")
        self.G_: Generator | None = None
        self.arch_: dict[str, Any] | None = None

    # -- networks -----------------------------------------------------------------------------------
    def _norm_impl(self) -> str:
        impl = self.params["norm_impl"]
        if impl == "auto":
            layout = resolve_layout(self.params["channels_last"], self.device, self.params["compile"])
            return "fused" if self.device.type == "cuda" and layout == "all" else "group"
        return impl

    def _arch(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        C, H, W = image_shape
        if H % 4 or W % 4:
            raise ValueError(f"medai_anomalypro: image height and width must be multiples of 4 (the generator "
                             f"down-samples twice), got {H}x{W}; resize the dataset (e.g. image_size: 64)")
        n_layers = self.params["critic_layers"] or auto_critic_layers(min(H, W))
        if min(H, W) < 2 ** n_layers:
            raise ValueError(f"medai_anomalypro: critic_layers={n_layers} strided convs need images of at least "
                             f"{2 ** n_layers} px, got {H}x{W}; use critic_layers: 0 (auto)")
        net_c = 3 if self.params["replicate_rgb"] and C == 1 else C
        return {"image_shape": (C, H, W), "net_channels": net_c, "head": self.params["head"],
                "g_conv_dim": self.params["g_conv_dim"], "g_repeat_num": self.params["g_repeat_num"],
                "d_conv_dim": self.params["d_conv_dim"], "critic_layers": n_layers}

    def _build_g(self, arch: dict[str, Any]) -> Generator:
        c = arch["net_channels"]
        out_c = 1 if arch["head"] == "additive" else c + 1
        G = Generator(c, out_c, arch["g_conv_dim"], arch["g_repeat_num"], self.params["norm_at_score"],
                      self._norm_impl())
        layout = resolve_layout(self.params["channels_last"], self.device, self.params["compile"])
        G.channels_last_tail = GENERATOR_TAIL[layout]
        return G

    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if self.arch_ and self.arch_["net_channels"] != x.shape[1] else x

    def _hp(self) -> dict[str, Any]:
        keys = ("g_lr", "d_lr", "beta1", "beta2", "n_critic", "lambda_gp", "lambda_id", "lambda_rec",
                "lambda_mask", "lambda_msmall", "lambda_mzerone", "mask_eps", "head")
        return {k: self.params[k] for k in keys}

    # -- fit ---------------------------------------------------------------------------------------
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "MedAIAnomalyPro":
        p = self.params
        if train.mixed is None:
            raise MissingMixedSetError(
                "medai_anomalypro learns from two sets: the unannotated mixed set A (train.mixed) and the healthy "
                "set B (train.healthy), but no set A was given. Run it with train_sets: mixed+healthy (its default) "
                "and a split with a mixed set (split: mixed_size / mixed_diseased_fraction), or pass "
                "TrainSets(healthy=..., mixed=...) when calling fit directly.")
        if len(train.mixed) == 0:
            raise MissingMixedSetError("medai_anomalypro: the mixed set A (train.mixed) is empty")
        if tuple(train.mixed.shape[1:]) != tuple(train.healthy.shape[1:]):
            raise ValueError(f"medai_anomalypro: sets A {tuple(train.mixed.shape[1:])} and B "
                             f"{tuple(train.healthy.shape[1:])} must have the same image shape")
        dev = self.device
        gen = seed_everything(p["seed"])
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.arch_ = arch = self._arch(train.image_shape)
        G = self._build_g(arch).to(dev)
        D = Critic(arch["net_channels"], arch["d_conv_dim"], arch["critic_layers"]).to(dev)
        G.train()
        D.train()
        self.G_ = G
        self._step = step = AnomalyProTrainer(G, D, self._hp(), dev, arch["net_channels"], p["amp"],
                                              p["channels_last"], p["compile"])

        # data: resident on the device when small (no per-iteration host transfer)
        nbytes = (train.mixed.numel() + train.healthy.numel()) * 4
        data_dev = dev if nbytes <= p["data_on_device_mb"] * 2 ** 20 else torch.device("cpu")
        self._bs = bs = min(p["batch_size"], len(train.mixed), len(train.healthy))
        seed_a, seed_b, seed_n = (int(s) for s in torch.randint(0, 2 ** 62, (3,), generator=gen))
        # sets A and B in two independent shuffled streams, each with its own generator
        samplers = {"a": BatchSampler(len(train.mixed), bs, torch.Generator().manual_seed(seed_a),
                                      data=train.mixed.to(data_dev)),
                    "b": BatchSampler(len(train.healthy), bs, torch.Generator().manual_seed(seed_b),
                                      data=train.healthy.to(data_dev))}
        self._noise = torch.Generator(device=dev).manual_seed(seed_n)

        def last_means() -> dict[str, Any]:  # kept with the resume state (a finished run checks them again)
            row = trainer.last_row
            return {"last_d": {k: row[k] for k in step.D_KEYS if k in row},
                    "last_g": {k: row[k] for k in step.g_keys if k in row}}

        trainer = Trainer(self, ctx, total=p["iterations"], arch=arch, samplers=samplers,
                          state={"G": G, "D": D, "g_opt": step.g_opt, "d_opt": step.d_opt, "noise": self._noise},
                          resume_free=self.RESUME_FREE, extra=(last_means, lambda held: None),
                          log_defaults={k: 0.0 for k in step.g_keys}, release=("_step", "_noise", "_bs"))
        trainer.run(self.training_step)
        self._check_mask(trainer.last_row, trainer.ctx)
        self._check_critic(trainer.last_row, trainer.ctx)
        G.to(memory_format=torch.contiguous_format).eval()
        self.fitted_ = True
        return self

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One iteration: the learning rate of this iteration, random flips of both batches, the GP mix weights, then
        :meth:`AnomalyProTrainer.step` (a critic step, and a generator step every ``n_critic`` iterations)."""
        p, dev, i = self.params, self.device, self._trainer.iteration
        self._step.set_lr(lr_factor(i, p["iterations"], p["lr_decay_iters"], p["lr_decay"], p["lr_update_step"]))
        x_a = self._augment(batch[0].to(dev, non_blocking=True), self._noise)
        x_b = self._augment(batch[1].to(dev, non_blocking=True), self._noise)
        alpha = torch.rand(self._bs, 1, 1, 1, generator=self._noise, device=dev)
        return self._step.step(i, x_a, x_b, alpha, record=False)

    def _check_mask(self, last: dict[str, float], ctx: FitContext) -> None:
        """Say so when the mask ended saturated (mean M above MASK_SATURATED on A and B): then B0 = B_int nearly
        everywhere and the map is the whole-image translation error rather than a localised mask."""
        m_a, m_b = last.get("mask_a_mean"), last.get("mask_b_mean")
        if m_a is None or m_b is None or min(m_a, m_b) < MASK_SATURATED:
            return
        ctx.warn(f"medai_anomalypro: the mask saturated (mean M = {m_a:.3f} on set A, {m_b:.3f} on set B "
                 f"over the last {self.params['log_every']} iterations), so B0 = B_int almost everywhere and the score "
                 f"is the whole-image translation error. At short budgets this happens when the focus loss pushes a "
                 f"near-uniform initial mask above 0.5 to 1; train longer, try other seeds or compare head: additive "
                 f"(mask_a_mean / mask_b_mean in losses.csv show when it happened).")

    def _check_critic(self, last: dict[str, float], ctx: FitContext) -> None:
        """Say so when training ended with the critic rating translated images above real healthy ones (mean
        D(fake) - D(real) above CRITIC_BEHIND over the last log window): the critic is then behind the generator,
        whose adversarial term pushes toward whatever fools it rather than toward healthy-looking images."""
        d_real, d_fake = last.get("d_real"), last.get("d_fake")
        if d_real is None or d_fake is None or d_fake - d_real <= CRITIC_BEHIND:
            return
        ctx.warn(f"medai_anomalypro: the critic ended behind the generator: over the last {self.params['log_every']} "
                 f"iterations it rated translated images above real healthy ones (mean D(real) - D(fake) = "
                 f"{d_real - d_fake:.3f}; a constant critic scores 0, an up-to-date one more), so the adversarial "
                 f"signal is not separating healthy from translated images (g_id in losses.csv typically rises). "
                 f"Seen at short budgets with the published equal learning rates; train longer, or try a faster "
                 f"critic (d_lr: 4e-4 or n_critic: 5; a deviation from the authors' settings).")

    def _augment(self, x: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        if self.arch_["net_channels"] != x.shape[1]:
            x = x.expand(-1, 3, -1, -1)
        if not self.params["random_flip"]:
            return x
        flip = torch.rand(x.shape[0], 1, 1, 1, generator=noise, device=x.device) < 0.5
        return torch.where(flip, x.flip(-1), x)

    # -- score ---------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.G_ is None:
            raise RuntimeError("medai_anomalypro: call fit() or load_state_dict() before score()")

    @torch.no_grad()
    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """B0(x) for a device batch ``x`` (fp32 result; bf16 autocast on CUDA when ``amp``)."""
        self._check_fitted()
        x = self._to_net(images)
        use_amp = self.params["amp"] and x.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
            y = at_least_fp32(self.G_(x))
        if self.arch_["head"] == "additive":
            return additive_translate(x, y)
        b_int, m = split_head(y, x.shape[1])
        return compose_healthy(b_int, m, x)

    def score(self, images: torch.Tensor) -> ScoreResult:
        self._check_fitted()
        self.G_ = self.G_.to(self.device).eval()

        def fn(x: torch.Tensor):
            t = self.translate(at_least_fp32(x))
            amap = anomaly_map(self._to_net(x), t)
            return amap.mean((1, 2)), amap, t.mean(1)

        scores, maps, recon = map_batches(fn, images, self.params["score_batch_size"], self.device)
        return ScoreResult(scores.double().numpy(), maps.numpy(), recon.numpy())

    # -- persistence ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {"format": 1, "arch": dict(self.arch_), "G": cpu_copy(self.G_.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        arch = dict(state["arch"])
        arch["image_shape"] = tuple(arch["image_shape"])
        self.arch_ = arch
        G = self._build_g(arch)
        G.load_state_dict(state["G"])
        self.G_ = G.to(self.device).eval()
        self.fitted_ = True
