"""The exact, portable half of ``anomaly-bench regress``: float64 few-step fits and the regression splits.

Short GAN training is chaotic: last-bit differences between CPU kernel paths (AVX2 / AVX-512, oneDNN, MKL) grow
over a few hundred iterations into different models, so end-of-training AUCs can only be compared statistically
(:mod:`anomaly_bench.harness.regress`). What *can* be compared exactly on any CPU is the computation itself:

* **methods**: every method of ``experiments/regression_exact.yaml`` is built with its ``ci`` profile (so a changed
  class default or profile value changes it), fitted for a few steps in float64 from its seeded initialisation on
  fixed batches (the first ``n_train`` healthy and mixed training images of the phantom's regression split), and
  scores ``n_score`` fixed test images in float64. Float64 kernel differences are ~1e-15 and a few steps do not
  amplify them past ~1e-12, far below any real change (a flipped loss sign, a changed score formula, learning rate
  or preprocessing moves the scores by 1e-5 or more). The reference keeps the scores and the resolved parameters;
  the check fails when a parameter differs or a score moves by more than ``rtol`` (relative).
* **splits**: for every dataset of the regression experiment, the image ids of each split role (and the data
  fingerprint). One test image moved between roles fails the check and is named.

The reference is ``results/reference/regression_exact.json`` (``anomaly-bench regress --update``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from anomaly_bench.core.config import check_keys, method_params, read_yaml, shipped_path
from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.experiment import load_experiment
from anomaly_bench.core.interface import FitContext, TrainSets
from anomaly_bench.core.registry import get_method
from anomaly_bench.data import split as data_split  # make_split looked up per call: a test substitutes it
from anomaly_bench.data.loading import resolve_card, root_present
from anomaly_bench.harness.jobs import dataset_label, load_dataset_for, split_config_for
from anomaly_bench.harness.regress import DEFAULT_EXPERIMENT
from anomaly_bench.nn.common import seed_everything

DEFAULT_EXACT_CONFIG = shipped_path("experiments/regression_exact.yaml")  # the checkout's, else the installed wheel's
DEFAULT_EXACT_REFERENCE = shipped_path("results/reference/regression_exact.json")
CONFIG_KEYS = {"name", "profile", "dataset", "n_train", "n_score", "rtol", "methods"}


@contextlib.contextmanager
def float64_default():
    """Build networks and run them in float64 (restores the previous default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def split_record(ds, split) -> dict[str, Any]:
    """Image ids per split role (sorted), their count and a short hash, and the data fingerprint."""
    roles: dict[str, list[str]] = {}
    for role in sorted(set(split.roles) - {""}):
        roles[role] = sorted(str(ds.ids[i]) for i in split.indices(role))
    digest = hashlib.sha256(json.dumps(roles, sort_keys=True).encode()).hexdigest()[:16]
    return {"fingerprint": ds.fingerprint(), "hash": digest, "counts": {r: len(v) for r, v in roles.items()},
            "roles": roles}


def _regression_splits(experiment: Path, data_root: str | None, echo: Callable[[str], None],
                       datasets: list[str] | None = None):
    """(name, dataset, split) of each dataset of the regression experiment whose data is present (and, with
    ``datasets``, that is named there; the others count as skipped)."""
    exp = load_experiment(experiment)
    out, skipped = [], []
    for spec in exp.datasets:
        card = resolve_card(spec.card)
        if datasets is not None and (spec.label or card["name"]) not in datasets:
            skipped.append(spec.label or card["name"])
            continue
        if not root_present(card, spec.data_root or data_root):
            skipped.append(spec.label or card["name"])
            continue
        ds = load_dataset_for(spec, exp, data_root)
        split = data_split.make_split(ds, split_config_for(ds, spec, exp), exp.seeds_of(spec)[0])
        out.append((dataset_label(spec, ds), ds, split))
    if skipped:
        echo(f"regress --exact: splits of {skipped} not checked (no data, or not asked for)")
    return out, skipped


def _fixed_images(ds, split, n_train: int, n_score: int) -> dict[str, np.ndarray]:
    """The first ``n_train`` healthy and mixed training images, and ``n_score`` test images (half healthy)."""
    test = split.indices("test")
    half = n_score // 2
    score = np.r_[test[ds.labels[test] == 0][:n_score - half], test[ds.labels[test] == 1][:half]]
    return {"healthy": split.indices("healthy")[:n_train], "mixed": split.indices("mixed")[:n_train],
            "score": score}


def _train_sets(images: torch.Tensor, idx: dict[str, np.ndarray], train_sets: str):
    b, a = images[torch.as_tensor(idx["healthy"])], images[torch.as_tensor(idx["mixed"])]
    if train_sets == "healthy":
        return TrainSets(healthy=b)
    if train_sets == "mixed_union":
        return TrainSets(healthy=torch.cat([b, a]))
    return TrainSets(healthy=b, mixed=a)


def exact_method_record(name: str, overrides: dict[str, Any], profile: str, images: torch.Tensor,
                        ids: list[str], idx: dict[str, np.ndarray]) -> dict[str, Any]:
    """Fit ``name`` (``profile`` + ``overrides``) in float64 on the fixed images; its parameters and scores."""
    cls = get_method(name)
    params = method_params(name, profile, {**overrides, "seed": 0, "device": "cpu"})
    with float64_default(), tempfile.TemporaryDirectory(prefix=f"exact-{name}-") as work:
        x = images.double()
        seed_everything(0)
        model = cls(**params)
        model.fit(_train_sets(x, idx, cls.default_train_sets),
                  FitContext(workdir=Path(work), checkpoint_every=0, progress=False))
        scores = model.score(x[torch.as_tensor(idx["score"])]).scores
    return {"params": json.loads(json.dumps(params, default=str)), "ids": [ids[i] for i in idx["score"]],
            "scores": [float(s) for s in scores]}


def load_exact_config(config: Path = DEFAULT_EXACT_CONFIG) -> dict[str, Any]:
    """The exact-check YAML, validated: known keys, registered methods, overrides valid for each method."""
    cfg = read_yaml(config)
    check_keys(cfg, CONFIG_KEYS, str(config), required={"methods"})
    if not isinstance(cfg["methods"], dict) or not cfg["methods"]:
        raise ConfigError(f"{config}: methods must map method names to budget overrides")
    for name, overrides in cfg["methods"].items():
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"{config}: methods.{name} must be a mapping of parameter overrides")
        method_params(name, cfg.get("profile", "ci"), overrides or {})
    return cfg


def run_exact(config: Path = DEFAULT_EXACT_CONFIG, experiment: Path | None = None, data_root: str | None = None,
              methods: list[str] | None = None, datasets: list[str] | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The exact record of this code: splits of the regression experiment, float64 few-step scores per method
    (only ``methods`` / the splits of ``datasets`` when given; the method images always need the config's
    dataset)."""
    cfg = load_exact_config(config)
    dataset = cfg.get("dataset", "phantom")
    if datasets is not None and methods != []:
        datasets = sorted(set(datasets) | {dataset})
    splits, skipped = _regression_splits(Path(experiment or DEFAULT_EXPERIMENT), data_root, echo, datasets)
    record: dict[str, Any] = {"rtol": float(cfg.get("rtol", 1e-6)), "profile": cfg.get("profile", "ci"),
                              "splits": {name: split_record(ds, sp) for name, ds, sp in splits},
                              "skipped_datasets": skipped, "methods": {}}
    by_name = {name: (ds, sp) for name, ds, sp in splits}
    if dataset not in by_name:
        raise ConfigError(f"{config}: dataset '{dataset}' is not one of the regression experiment's datasets "
                          f"with data present ({sorted(by_name)})")
    ds, sp = by_name[dataset]
    idx = _fixed_images(ds, sp, int(cfg.get("n_train", 64)), int(cfg.get("n_score", 32)))
    record["dataset"] = dataset
    record["n_train"], record["n_score"] = int(cfg.get("n_train", 64)), int(cfg.get("n_score", 32))
    for name, overrides in cfg["methods"].items():
        if methods is not None and name not in methods:
            continue
        echo(f"regress --exact: {name} (float64, {overrides or 'profile budget'})")
        record["methods"][name] = exact_method_record(name, overrides or {}, record["profile"], ds.images,
                                                      list(ds.ids), idx)
    return record


def _role_changes(old: dict[str, list[str]], new: dict[str, list[str]]) -> list[str]:
    out = []
    for role in sorted(set(old) | set(new)):
        a, b = set(old.get(role, [])), set(new.get(role, []))
        if a != b:
            left, entered = sorted(a - b), sorted(b - a)
            out.append(f"role {role}: {len(left)} image(s) left {left[:5]}, {len(entered)} entered {entered[:5]}")
    return out


def _param_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys if old.get(k) != new.get(k)]


def compare_exact(reference: dict[str, Any], new: dict[str, Any], rtol: float | None = None
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (one per split and method) and problems (each naming the dataset or method and what moved)."""
    rtol = float(reference.get("rtol", 1e-6) if rtol is None else rtol)
    rows, problems = [], []
    for name, old in sorted(reference.get("splits", {}).items()):
        cur = new["splits"].get(name)
        if cur is None:
            status = "skipped (no data)" if name in new.get("skipped_datasets", []) else "MISSING"
            if status == "MISSING":
                problems.append(f"split of {name}: in the exact reference but not produced")
        elif cur["hash"] == old["hash"]:
            status = "ok"
        else:
            status = "SPLIT CHANGED"
            moved = "; ".join(_role_changes(old["roles"], cur["roles"]))
            data = ("" if cur["fingerprint"] == old["fingerprint"] else
                    f" (the data changed too: fingerprint {old['fingerprint']} -> {cur['fingerprint']})")
            problems.append(f"split of {name} (regression seed) changed{data}: {moved}")
        rows.append({"what": f"split {name}", "max_rel_diff": math.nan, "status": status})
    for name, old in sorted(reference.get("methods", {}).items()):
        cur = new["methods"].get(name)
        if cur is None:
            rows.append({"what": f"method {name}", "max_rel_diff": math.nan, "status": "not run"})
            continue
        status, diff = "ok", math.nan
        changed = _param_changes(old["params"], cur["params"])
        if changed:
            status = "PARAMS CHANGED"
            problems.append(f"{name}: its resolved `{reference.get('profile', 'ci')}` parameters changed: "
                            f"{'; '.join(changed)} (a class default, YAML params or profile value)")
        if cur["ids"] != old["ids"]:
            status = "IMAGES CHANGED"
            problems.append(f"{name}: the fixed exact-check images differ from the reference's (split or data "
                            f"changed)")
        else:
            a, b = np.asarray(old["scores"], dtype=float), np.asarray(cur["scores"], dtype=float)
            if not np.all(np.isfinite(b)):
                diff = math.inf
            else:
                diff = float(np.max(np.abs(b - a) / np.maximum(np.abs(a), 1e-12)))
            if not diff <= rtol:
                status = "SCORES CHANGED" if status == "ok" else status
                worst = int(np.argmax(np.abs(b - a))) if np.all(np.isfinite(b)) else 0
                problems.append(f"{name}: float64 scores after its few exact training steps moved (max relative "
                                f"difference {diff:.3g} > rtol {rtol:g} on {len(a)} images; e.g. {old['ids'][worst]}"
                                f" {a[worst]:.10g} -> {b[worst]:.10g}): a changed loss, sign, optimiser, "
                                f"initialisation, preprocessing or score formula")
        rows.append({"what": f"method {name}", "max_rel_diff": diff, "status": status})
    for name in sorted(set(new.get("methods", {})) - set(reference.get("methods", {}))):
        rows.append({"what": f"method {name}", "max_rel_diff": math.nan, "status": "new (not in reference)"})
    return rows, problems


def write_exact_reference(path: Path, record: dict[str, Any], info: dict[str, Any]) -> None:
    blob = {"description": "anomaly-bench exact regression reference: split ids per role of the regression "
                           "experiment, and float64 few-step scores per method (experiments/regression_exact.yaml)",
            "versions": info, **record}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob, indent=1, default=str) + "\n")
