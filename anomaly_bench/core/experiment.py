"""Experiment files: which datasets × methods × seeds × settings to run, and how.

```yaml
name: my-comparison
profile: ci                    # default method profile
seeds: [0, 1, 2]
settings: [inductive, transductive]
device: auto
threshold_rule: holdout_healthy   # holdout_healthy (label-free, default) | youden | equal_error (test-tuned)
threshold_specificity: 0.95       # holdout_healthy: the held-out healthy score quantile used as threshold
selection: last                # the checkpoint rule of the main table: last | aucp (the other: analysis table)
datasets:
  - phantom                                  # a card name, a card path or a data path
  - {card: brain_tumor_mri, image_size: 64, split: {test_size: 400}}
  - {card: chest_xray_pneumonia, seeds: [0]}   # this dataset's seeds (default: the experiment's)
methods:
  - medai_anomalypro
  - {name: alad, profile: smoke, params: {epochs: 2}, train_sets: mixed_union}
  - {name: medai_anomalypro, label: anomalypro_additive, params: {head: additive}}
plugins: [path/to/my_method.py]
```
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from anomaly_bench.core.config import check_keys, read_yaml
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.interface import TRAIN_SET_CHOICES

SETTINGS = ("inductive", "transductive")
EXPERIMENT_KEYS = {"name", "profile", "seeds", "settings", "device", "threshold_rule", "threshold_specificity",
                   "datasets", "methods", "plugins", "n_maps", "data_root", "split", "selection"}
THRESHOLD_RULE_CHOICES = ("holdout_healthy", "youden", "equal_error")
SELECTION_CHOICES = ("last", "aucp")
DATASET_KEYS = {"card", "label", "image_size", "split", "data_root", "on_bad_image", "limit_per_class", "seeds"}
METHOD_KEYS = {"name", "label", "profile", "params", "train_sets", "selection"}
#: a method label names its job folder: letters, digits and ``_ . + -``, not starting with a dot
LABEL_RE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")
DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_seeds(seeds: Any, where: str) -> list[int]:
    """A non-empty list of integers >= 0 (a single integer is a list of one)."""
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: give a non-empty list of integers >= 0 (comma-separated on the command line, "
                          f"e.g. 0,1,2), got {seeds!r}")
    return seeds


def _check_int(value: Any, where: str, least: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ConfigError(f"{where} must be an integer >= {least}, got {value!r}")


@dataclass
class DatasetSpec:
    card: str | dict
    label: str | None = None
    image_size: int | None = None
    split: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    on_bad_image: str | None = None
    limit_per_class: int | None = None
    seeds: list[int] | None = None  # this dataset's seeds; None: the experiment's


@dataclass
class MethodSpec:
    name: str
    label: str | None = None
    profile: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train_sets: str | None = None
    selection: bool = True

    @property
    def key(self) -> str:
        return self.label or self.name

    def fingerprint(self, profile: str, resolved_params: dict[str, Any] | None = None) -> str:
        """Changes when anything that defines the job changes, the method's YAML included."""
        blob = json.dumps({**asdict(self), "profile": self.profile or profile, "resolved": resolved_params},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class Experiment:
    name: str = "experiment"
    profile: str = "smoke"
    seeds: list[int] = field(default_factory=lambda: [0])
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    device: str = "auto"
    threshold_rule: str = "holdout_healthy"
    threshold_specificity: float = 0.95
    selection: str = "last"
    datasets: list[DatasetSpec] = field(default_factory=list)
    methods: list[MethodSpec] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    n_maps: int = 6
    data_root: str | None = None
    split: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def seeds_of(self, spec: DatasetSpec) -> list[int]:
        """The seeds a dataset runs: its own ``seeds`` where given, else the experiment's."""
        return list(spec.seeds) if spec.seeds else list(self.seeds)


def _dataset_spec(d: Any, where: str) -> DatasetSpec:
    if isinstance(d, str):
        return DatasetSpec(card=d)
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: a dataset entry must be a name/path or a mapping, got {d!r}")
    if "card" not in d and "format" in d:  # an inline card
        return DatasetSpec(card=d)
    check_keys(d, DATASET_KEYS, where, required={"card"})
    _check_int(d.get("image_size"), f"{where}.image_size", 1)
    _check_int(d.get("limit_per_class"), f"{where}.limit_per_class", 1)
    if d.get("seeds") is not None:
        d = {**d, "seeds": check_seeds(d["seeds"], f"{where}.seeds")}
    if d.get("split") is not None and not isinstance(d["split"], dict):
        raise ConfigError(f"{where}.split must be a mapping")
    return DatasetSpec(**d)


def _method_spec(m: Any, where: str) -> MethodSpec:
    if isinstance(m, str):
        return MethodSpec(name=m)
    if not isinstance(m, dict):
        raise ConfigError(f"{where}: a method entry must be a name or a mapping, got {m!r}")
    check_keys(m, METHOD_KEYS, where, required={"name"})
    if m.get("train_sets") is not None and m["train_sets"] not in TRAIN_SET_CHOICES:
        raise ConfigError(f"{where}.train_sets: {m['train_sets']!r} is not one of {list(TRAIN_SET_CHOICES)}")
    if m.get("params") is not None and not isinstance(m["params"], dict):
        raise ConfigError(f"{where}.params must be a mapping")
    label = m.get("label")
    if label is not None and not (isinstance(label, str) and LABEL_RE.fullmatch(label)):
        raise ConfigError(f"{where}.label: {label!r} names the method's job folder: use letters, digits and "
                          f"_ . + - only (no path separators, not starting with a dot), e.g. anomalypro_additive")
    return MethodSpec(**{k: v for k, v in m.items() if v is not None or k not in ("params",)})


def parse_experiment(data: dict[str, Any], where: str = "experiment") -> Experiment:
    check_keys(data, EXPERIMENT_KEYS, where)
    exp = Experiment()
    for k in ("name", "profile", "device", "threshold_rule", "data_root", "selection"):
        if k in data and data[k] is not None:
            if not isinstance(data[k], str):
                raise ConfigError(f"{where}.{k} must be a string, got {data[k]!r}")
            setattr(exp, k, data[k])
    if "seeds" in data:
        exp.seeds = check_seeds(data["seeds"], f"{where}.seeds")
    if not DEVICE_RE.fullmatch(exp.device):
        raise ConfigError(f"{where}.device: unknown device {exp.device!r}; use one of cpu, cuda (or cuda:N), auto, "
                          f"mps")
    if "settings" in data:
        settings = data["settings"]
        settings = [settings] if isinstance(settings, str) else settings
        bad = [s for s in settings or [] if s not in SETTINGS]
        if not settings or bad:
            raise ConfigError(f"{where}.settings: {data['settings']!r}; allowed values: {list(SETTINGS)}")
        exp.settings = list(settings)
    if exp.threshold_rule not in THRESHOLD_RULE_CHOICES:
        raise ConfigError(f"{where}.threshold_rule: {exp.threshold_rule!r}; allowed: "
                          f"{', '.join(THRESHOLD_RULE_CHOICES)}")
    if exp.selection not in SELECTION_CHOICES:
        raise ConfigError(f"{where}.selection: {exp.selection!r}; allowed: {', '.join(SELECTION_CHOICES)} (the "
                          "checkpoint rule of the main table, fixed before the run)")
    if "threshold_specificity" in data:
        q = data["threshold_specificity"]
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1:
            raise ConfigError(f"{where}.threshold_specificity must be a number in (0, 1) (e.g. 0.95), got {q!r}")
        exp.threshold_specificity = float(q)
    if "n_maps" in data:
        _check_int(data["n_maps"] if data["n_maps"] is not None else "null",
                   f"{where}.n_maps (test images in the map gallery)", 0)
        exp.n_maps = data["n_maps"]
    if data.get("split") is not None:
        if not isinstance(data["split"], dict):
            raise ConfigError(f"{where}.split must be a mapping")
        exp.split = dict(data["split"])
    if data.get("plugins"):
        exp.plugins = list(data["plugins"])
    exp.datasets = [_dataset_spec(d, f"{where}.datasets[{i}]") for i, d in enumerate(data.get("datasets") or [])]
    exp.methods = [_method_spec(m, f"{where}.methods[{i}]") for i, m in enumerate(data.get("methods") or [])]
    keys = [m.key for m in exp.methods]
    dups = sorted({k for k in keys if keys.count(k) > 1})
    if dups:
        raise ConfigError(f"{where}.methods: {dups} listed twice; give each variant its own `label`")
    return exp


def load_experiment(path: str | Path) -> Experiment:
    return parse_experiment(read_yaml(path), where=str(path))
