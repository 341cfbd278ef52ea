"""YAML configuration: method files with named profiles, dataset cards, experiment files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from anomaly_bench.core.errors import ConfigError
from anomaly_bench.core.registry import METHODS, get_method

PACKAGE_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PACKAGE_DIR.parent
#: Where an installed wheel keeps the repository's top-level ``methods/``, ``datasets/``, ``experiments/`` and
#: ``results/reference/`` (same relative paths; setup.py copies them there when the wheel is built).
SHIPPED_DIR = PACKAGE_DIR / "_shipped"


def checkout_dir() -> Path | None:
    """The repository checkout this package runs from (editable install, PYTHONPATH), or None when it is an
    installed wheel (its parent folder is then site-packages, which may hold unrelated ``datasets/`` etc.)."""
    return REPO_DIR if (REPO_DIR / "pyproject.toml").is_file() else None


def shipped_path(rel: str | Path) -> Path:
    """A file or folder that ships with anomaly-bench, by its path in the repository (``methods``,
    ``experiments/default.yaml``, ``results/reference/regression.json``): in the checkout when running from one,
    else in the installed package (``SHIPPED_DIR``)."""
    base = checkout_dir()
    return (base if base is not None else SHIPPED_DIR) / rel


def config_dirs(kind: str) -> list[Path]:
    """Where ``methods/`` or ``datasets/`` YAML files are looked up: ``$ANOMALY_BENCH_<KIND>_DIR``
    (os.pathsep-separated), then the repository's top-level folder, or for an installed wheel the copy it
    carries (:func:`shipped_path`)."""
    env = os.environ.get(f"ANOMALY_BENCH_{kind.upper()}_DIR")
    dirs = [Path(p) for p in env.split(os.pathsep)] if env else []
    return dirs + [shipped_path(kind)]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def check_keys(data: dict, allowed: set[str] | dict, where: str, required: set[str] = frozenset()) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(set(required) - set(data))
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {missing}")


def is_builtin_method(name: str) -> bool:
    """True for a method registered by ``anomaly_bench.methods`` (not by a plugin)."""
    return name in METHODS.names() and METHODS.get(name).__module__.startswith(METHODS.builtin_package + ".")


def method_yaml_path(name: str) -> Path | None:
    """The method's YAML file (first found in :func:`config_dirs`). None for a plugin that ships none (its class
    attributes ``profiles``/``resources`` are then its configuration); for a built-in method a missing file is a
    :class:`ConfigError` naming where it was looked for, never a silent fall-back to the class defaults (the paper
    schedule: days of training where ``smoke`` was asked for)."""
    dirs = config_dirs("methods")
    for d in dirs:
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    if is_builtin_method(name):
        looked = ", ".join(str(d / f"{name}.yaml") for d in dirs)
        raise ConfigError(
            f"method '{name}': its profile file {name}.yaml was not found (looked for {looked}). It ships with "
            f"anomaly-bench (methods/{name}.yaml in the repository, anomaly_bench/_shipped/methods/ in an installed "
            f"wheel): reinstall the package from a complete checkout or wheel, or set ANOMALY_BENCH_METHODS_DIR to a "
            f"folder that holds {name}.yaml")
    return None


METHOD_FILE_KEYS = {"method", "description", "reference", "params", "profiles", "resources"}


def method_params(name: str, profile: str | None = None, overrides: dict | None = None,
                  yaml_path: str | Path | None = None) -> dict[str, Any]:
    """Resolve a method's parameters: class defaults ← YAML ``params`` ← YAML ``profiles[profile]``
    ← ``overrides``. Every key is validated against the class's schema."""
    cls = get_method(name)
    path = Path(yaml_path) if yaml_path else method_yaml_path(name)
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        check_keys(data, METHOD_FILE_KEYS, str(path))
    profiles = {**cls.profiles, **(data.get("profiles") or {})}
    params = dict(data.get("params") or {})
    cls.validate_params(params, where=f"{path}: params")
    if profile and not profiles:
        pass  # a plugin with no YAML and no profiles: its class defaults are its only configuration
    elif profile:
        if profile not in profiles:
            raise ConfigError(f"method '{name}': profile '{profile}' not defined "
                              f"(in {path or cls.__module__}); available: {sorted(profiles)}")
        prof = profiles[profile] or {}
        cls.validate_params(prof, where=f"{path or name}: profiles.{profile}")
        params.update(prof)
    if overrides:
        cls.validate_params(overrides, where=f"method '{name}' overrides")
        params.update(overrides)
    return cls.validate_params(params, where=f"method '{name}'")


RESOURCE_KEYS = ("cpus", "gpus", "memory_gb")
DEFAULT_RESOURCES: dict[str, float] = {"cpus": 1, "gpus": 0, "memory_gb": 0}


def method_resources(name: str, profile: str | None = None, yaml_path: str | Path | None = None) -> dict[str, float]:
    """What one job of method ``name`` at ``profile`` asks a cluster for (``anomaly-bench run --executor ray``):
    ``{"cpus": .., "gpus": .., "memory_gb": ..}``. The method YAML's ``resources[profile]`` over its
    ``resources.default``; a method without a ``resources`` block in a YAML (a plugin) uses its class attribute
    ``resources`` the same way; what neither gives is 1 CPU, no GPU and no memory reservation."""
    path = Path(yaml_path) if yaml_path else method_yaml_path(name)
    res = (read_yaml(path).get("resources") or {}) if path is not None else {}
    where = f"{path}: resources"
    if not res:
        res = getattr(get_method(name), "resources", None) or {}
        where = f"method '{name}' (class attribute resources)"
    if not isinstance(res, dict) or not all(isinstance(v, dict) for v in res.values()):
        raise ConfigError(f"{where}: must map profile names (or `default`) to {{cpus, gpus, memory_gb}}")
    out = {**DEFAULT_RESOURCES, **(res.get("default") or {})}
    if profile and profile != "default":
        out.update(res.get(profile) or {})
    check_keys(out, set(RESOURCE_KEYS), f"{where}.{profile or 'default'}")
    for k, v in out.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"{where}.{profile or 'default'}.{k}: a number >= 0, got {v!r}")
    if out["cpus"] <= 0:
        raise ConfigError(f"{where}.{profile or 'default'}.cpus: a job needs at least some CPU, got {out['cpus']!r}")
    return out
