"""Decoded-once cache of preprocessed image arrays.

The key is the sha256 of a JSON description of the work: the file list with each file's size and
modification time (``file_signature``), the preprocessing settings, the image size and ``CACHE_VERSION``.
Any change to a file, to the list of files or to a setting gives a new key, so a stale entry is never
read. Entries are uncompressed ``.npz`` files (uint8 for 8-bit sources, float16 otherwise; the decoder
quantises identically on the first run, so cached and fresh loads are bit-identical); arrays named in
``mmap`` (the decoded images) are stored beside it as ``<key>.<name>.npy`` and read back memory-mapped,
read-only, so every job and Ray worker on a node shares one page-cache copy of a large set. They live under
``$ANOMALY_BENCH_CACHE`` or ``~/.cache/anomaly_bench``; ``ANOMALY_BENCH_CACHE=off`` disables the cache.
An unwritable cache folder only prints a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

#: Bump when decoding/preprocessing code changes what it produces.
CACHE_VERSION = 2  # 2: decoded images in a memory-mapped side file (issue 24)
#: An ``info`` key: when true the result is returned but not stored (e.g. a transient read failure).
NO_STORE = "_no_store"
_OFF = {"", "0", "off", "none", "false", "no"}


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when disabled by ``ANOMALY_BENCH_CACHE=off``."""
    env = os.environ.get("ANOMALY_BENCH_CACHE")
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    return Path.home() / ".cache" / "anomaly_bench"


def file_signature(paths: Sequence[str | Path], relative_to: str | Path | None = None) -> list[list[Any]]:
    """``[[path, size, mtime_ns], ...]`` (paths relative to ``relative_to`` when given, so a moved data
    folder with unchanged files keeps its cache entry). Missing files get size ``-1``. Plain strings and
    ``os.stat`` (pathlib costs more than the stat on 100k files)."""
    base = (str(relative_to).rstrip(os.sep) + os.sep) if relative_to is not None else None
    sig = []
    for p in paths:
        name = os.fspath(p)
        try:
            st = os.stat(name)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        if base is not None and name.startswith(base):
            name = name[len(base):].replace(os.sep, "/")
        sig.append([name, size, mtime])
    return sig


def cache_key(obj: dict[str, Any]) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, **obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cached(key_obj: dict[str, Any], compute: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
           enabled: bool = True, mmap: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Return ``compute()``'s ``(arrays, info)`` from the cache, computing and storing it on a miss.
    ``info`` must be JSON-serialisable. Arrays named in ``mmap`` come back as read-only memory maps of their
    cache files (also right after a miss, so the decoded copy in memory can be freed)."""
    folder = cache_dir() if enabled else None
    if folder is None:
        arrays, info = compute()
        info.pop(NO_STORE, None)
        return arrays, info
    path = folder / f"{cache_key(key_obj)}.npz"
    hit = _read(path)
    if hit is not None:
        return hit
    arrays, info = compute()
    if not info.pop(NO_STORE, False):
        _write(path, arrays, info, mmap)
        if mmap:
            hit = _read(path)
            if hit is not None:
                return hit
    return arrays, info


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in ("__info__", "__mmap__")}
            info = json.loads(str(z["__info__"]))
            mapped = [str(k) for k in z["__mmap__"]] if "__mmap__" in z.files else []
        for k in mapped:
            arrays[k] = np.load(_side_file(path, k), mmap_mode="r", allow_pickle=False)
        return arrays, info
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        return None  # a damaged entry is recomputed and overwritten


def _side_file(path: Path, name: str) -> Path:
    return path.with_name(f"{path.stem}.{name}.npy")


def _write(path: Path, arrays: dict[str, np.ndarray], info: dict[str, Any], mmap: Sequence[str] = ()) -> None:
    mapped = [k for k in mmap if k in arrays]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for k in mapped:  # side files first: an .npz on disk means its side files are complete
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arrays[k]), allow_pickle=False)
            os.chmod(tmp, 0o644)
            os.replace(tmp, _side_file(path, k))
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        rest = {k: v for k, v in arrays.items() if k not in mapped}
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __info__=np.array(json.dumps(info)), __mmap__=np.array(mapped, dtype=str), **rest)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        print(f"warning: cannot write the image cache {path} ({exc}); set ANOMALY_BENCH_CACHE to a writable "
              f"folder or to 'off'", file=sys.stderr)
        try:
            os.unlink(tmp)  # type: ignore[possibly-undefined]
        except (OSError, NameError, UnboundLocalError):
            pass
