"""Registries for methods and dataset formats (timm style: a decorator per family, plugins by entry point).

Built-in methods live one family per module or subpackage of ``anomaly_bench/methods/`` (a subpackage's
``__init__`` imports its method module) and register themselves with ``@register_method("name")``
(:func:`anomaly_bench.core.interface.register_method`, beside the class it checks).
Third-party methods register the same way from their own package, listed under the entry-point group
``anomaly_bench.methods`` (or ``anomaly_bench.datasets`` for dataset formats), or are loaded for one run
with ``--plugin path/to/file.py`` / ``--plugin package.module``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable

from anomaly_bench.core.errors import ConfigError

METHOD_GROUP = "anomaly_bench.methods"
DATASET_GROUP = "anomaly_bench.datasets"


class Registry:
    def __init__(self, kind: str, builtin_package: str, group: str):
        self.kind, self.builtin_package, self.group = kind, builtin_package, group
        self._items: dict[str, Any] = {}
        self._origin: dict[str, str] = {}
        self.unavailable: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, obj: Any, origin: str, overwrite: bool = False) -> None:
        if name in self._items and self._items[name] is not obj and not overwrite:
            raise ConfigError(
                f"{self.kind} '{name}' is registered twice ({self._origin[name]} and {origin}); "
                f"rename one, or pass overwrite=True to replace it on purpose")
        self._items[name] = obj
        self._origin[name] = origin

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.builtin_package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name.startswith("_"):
                continue
            try:
                importlib.import_module(f"{self.builtin_package}.{mod.name}")
            except ModuleNotFoundError as exc:
                # a third-party dependency of one family is missing (e.g. anomalib for PaDiM/PatchCore):
                # the other families stay usable; the missing one is named with the fix
                if exc.name and exc.name.split(".")[0] == "anomaly_bench":
                    raise
                self.unavailable[mod.name] = f"needs the package '{exc.name}' (pip install it)"
                print(f"warning: built-in {self.kind} module '{mod.name}' unavailable: "
                      f"{self.unavailable[mod.name]}", file=sys.stderr)
        for ep in importlib.metadata.entry_points(group=self.group):
            try:
                ep.load()  # importing the module runs its @register_* decorators
            except Exception as exc:  # a broken third-party plugin must not hide the built-ins
                print(f"warning: plugin entry point '{ep.name}' ({ep.value}) failed to load: {exc}",
                      file=sys.stderr)

    def get(self, name: str) -> Any:
        self._ensure_loaded()
        if name not in self._items:
            hint = f" ({name}: {self.unavailable[name]})" if name in self.unavailable else ""
            raise ConfigError(f"unknown {self.kind} '{name}'{hint}; registered: {sorted(self._items)}. "
                              f"A plugin {self.kind} must be loaded with --plugin or an entry point "
                              f"in the group '{self.group}'")
        return self._items[name]

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def origin(self, name: str) -> str:
        self._ensure_loaded()
        return self._origin[name]


METHODS = Registry("method", "anomaly_bench.methods", METHOD_GROUP)
DATASET_FORMATS = Registry("dataset format", "anomaly_bench.data.formats", DATASET_GROUP)


def register_format(name: str, *, overwrite: bool = False) -> Callable[[Callable], Callable]:
    """Function decorator for dataset loaders: ``loader(card: dict, root: Path) -> ImageDataset``."""

    def deco(fn: Callable) -> Callable:
        fn.format_name = name  # type: ignore[attr-defined]
        DATASET_FORMATS.register(name, fn, f"{fn.__module__}.{fn.__qualname__}", overwrite)
        return fn

    return deco


def get_method(name: str):
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def default_experiment_methods() -> list[str]:
    """The registered methods an experiment with ``methods: []`` runs: all but those whose class says
    ``in_default_experiment = False`` (slow or protocol-specific methods, run through their own experiment file)."""
    return [m for m in METHODS.names() if getattr(METHODS.get(m), "in_default_experiment", True)]


def load_plugin(spec: str) -> str:
    """Import a plugin from a ``.py`` file path or a dotted module name; returns the module name."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--plugin {spec}: no such file")
        modname = f"anomaly_bench_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        if modname in sys.modules:
            return modname
        s = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[modname] = module
        try:
            s.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception:
            del sys.modules[modname]
            raise
        return modname
    try:
        importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--plugin {spec}: neither a file nor an importable module ({exc})") from exc
    return spec
