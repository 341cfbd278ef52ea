"""Build step (everything else is in pyproject.toml): the wheel carries the top-level ``methods/``, ``datasets/``,
``experiments/`` and ``results/reference/`` as package data under ``anomaly_bench/_shipped/`` (same relative
paths), where ``anomaly_bench.core.config.shipped_path`` finds them when no repository checkout is around. In git
they live only at the top level; an editable install reads them there, so nothing is copied for it."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: (folder of the checkout, file pattern); the files land in anomaly_bench/_shipped/<folder>/ of the wheel
SHIPPED = [("methods", "*.yaml"), ("datasets", "*.yaml"), ("experiments", "*.yaml"), ("results/reference", "*.json")]
TARGET = Path("anomaly_bench", "_shipped")


def copy_shipped(src_root: Path, dest: Path) -> list[Path]:
    """Copy the SHIPPED files from the checkout ``src_root`` into ``dest`` (emptied first, so a file deleted from
    the checkout does not linger in a reused build folder); a missing folder is an error, not an empty wheel."""
    if dest.exists():
        shutil.rmtree(dest)
    out = []
    for folder, pattern in SHIPPED:
        files = sorted((src_root / folder).glob(pattern))
        if not files:
            raise SystemExit(f"setup.py: no {pattern} files in {src_root / folder}; the wheel would lack them "
                             f"(an sdist must include them: see MANIFEST.in)")
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, dest / folder / f.name)
            out.append(dest / folder / f.name)
    return out


class BuildPyWithShipped(build_py):
    """``build_py`` plus the shipped configuration files (not for editable installs, which read the checkout)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            copy_shipped(HERE, Path(self.build_lib) / TARGET)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outs
        dest = Path(self.build_lib) / TARGET
        return outs + [str(dest / folder / f.name) for folder, pattern in SHIPPED
                       for f in sorted((HERE / folder).glob(pattern))]


if __name__ == "__main__":  # setuptools' build backend runs this file as __main__; tests import copy_shipped
    setup(cmdclass={"build_py": BuildPyWithShipped})
