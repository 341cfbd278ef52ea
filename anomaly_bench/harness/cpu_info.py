"""The CPU a run used and the kernel path torch took on it (recorded in every ``run.json`` and reference).

Short GAN training amplifies last-bit differences between SIMD kernels (ATen's AVX2 / AVX-512 code, oneDNN's
ISA dispatch, MKL's code path) into different models, so a result is only reproducible on the same kernel path.
These environment variables select the path (set them before torch is imported):

* ``ATEN_CPU_CAPABILITY`` = ``default`` | ``avx2`` | ``avx512``: ATen's own vectorised kernels;
* ``ONEDNN_MAX_CPU_ISA`` = e.g. ``AVX2``: the widest ISA oneDNN (convolutions, fp32 matmul) may use;
* ``MKL_CBWR`` = e.g. ``COMPATIBLE`` | ``AVX2``: MKL's conditional bit-wise reproducibility branch.
"""

from __future__ import annotations

import os
import platform
from typing import Any

KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
_FLAGS_OF_INTEREST = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                      "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str | None, list[str]]:
    model, flags = None, []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = value.split()
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or None, flags


def kernel_path_env() -> dict[str, str]:
    """The kernel-path environment variables that are set (empty: torch's native choice on this CPU)."""
    return {k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)}


def kernel_path_label() -> str:
    """A short name for the kernel path: ``native`` or e.g. ``ATEN_CPU_CAPABILITY=default,MKL_CBWR=COMPATIBLE``."""
    env = kernel_path_env()
    return ",".join(f"{k}={v}" for k, v in env.items()) or "native"


def cpu_info() -> dict[str, Any]:
    """CPU model, its vector extensions, torch's ATen CPU capability and the kernel-path variables in force."""
    import torch

    model, flags = _cpuinfo()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # older torch
        capability = None
    return {"model": model, "machine": platform.machine(),
            "vector_extensions": [f for f in _FLAGS_OF_INTEREST if f in flags],
            "aten_cpu_capability": capability, "kernel_env": kernel_path_env(), "kernel_path": kernel_path_label(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "cpu_count": os.cpu_count()}
