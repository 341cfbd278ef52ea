"""The versions a result depends on (package, git commit, torch, anomalib, ..., CPU): recorded in run.json and
every job.json."""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any

import numpy as np
import sklearn
import torch

import anomaly_bench
from anomaly_bench.core.config import REPO_DIR
from anomaly_bench.harness.cpu_info import cpu_info


def versions() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except Exception:
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    try:  # optional dependency: only PaDiM/PatchCore need anomalib; a run of the others records that it is absent
        import anomalib
        anomalib_version = getattr(anomalib, "__version__", None)
    except ImportError:
        anomalib_version = "not installed"
    return {"anomaly_bench": anomaly_bench.__version__, "git_commit": commit, "git_dirty": bool(dirty),
            "torch": torch.__version__, "anomalib": anomalib_version,
            "sklearn": sklearn.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None, "cpu": cpu_info()}
