"""Many image files at once: decode and preprocess them in threads (Pillow releases the GIL) through the
decode cache (:mod:`anomaly_bench.data.cache`); one file's steps are in :mod:`anomaly_bench.data.image_io`."""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.data import cache as cache_mod
from anomaly_bench.data.image_io import (
    BAD_IMAGE_FIX,
    ON_BAD_IMAGE,
    READ_FAILURE,
    BadImage,
    Preprocessing,
    decode_bytes,
    preprocess,
    quantize,
    to_model_range,
)


@dataclass
class DecodedFiles:
    """Result of :func:`decode_files`: ``stored`` ``(K, S, S)`` uint8/float16 in ``[0, 1]`` (a read-only memory
    map of the cache entry when the cache is on), ``kept`` indices
    into the input list, ``sha256`` of each kept file's bytes, ``skipped`` ``[(path, reason)]``."""

    stored: np.ndarray
    kept: np.ndarray
    sha256: list[str]
    skipped: list[tuple[str, str]]

    def images(self) -> np.ndarray:
        """``float32 (K, 1, S, S)`` in ``[-1, 1]``."""
        return to_model_range(self.stored)[:, None]


def _decode_one(path: str | Path, image_size: int, prep: Preprocessing) -> tuple[np.ndarray, str]:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BadImage(f"{READ_FAILURE} ({exc.strerror or exc})") from None
    return preprocess(decode_bytes(data, prep), image_size, prep), hashlib.sha256(data).hexdigest()


def _workers() -> int:
    env = os.environ.get("ANOMALY_BENCH_IO_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(8, os.cpu_count() or 1))


def decode_files(paths: Sequence[str | Path], image_size: int, prep: Preprocessing = Preprocessing(),
                 on_bad_image: str = "error", cache: bool = True, desc: str = "images",
                 relative_to: str | Path | None = None) -> DecodedFiles:
    """Decode and preprocess many image files (threads; Pillow releases the GIL), through the cache.

    With ``on_bad_image="error"`` every file is tried and then a :class:`DataError` names the first bad
    file (and how many more there are) and the fix; with ``"skip"`` bad files are listed in ``skipped``.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ConfigError(f"on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    paths = [os.fspath(p) for p in paths]

    def compute() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _decode_uncached(paths, image_size, prep, desc)

    key = {"what": "decode_files", "files": cache_mod.file_signature(paths, relative_to),
           "image_size": int(image_size), "preprocessing": prep.as_dict()}
    arrays, info = cache_mod.cached(key, compute, enabled=cache, mmap=("stored",))
    skipped = [(str(p), r) for p, r in info["failed"]]
    if skipped and on_bad_image == "error":
        p, r = skipped[0]
        more = f" ({len(skipped) - 1} more bad file(s), e.g. {skipped[1][0]})" if len(skipped) > 1 else ""
        raise DataError(f"{p}: {r}{more}; {BAD_IMAGE_FIX}")
    return DecodedFiles(arrays["stored"], arrays["kept"].astype(np.int64), list(info["sha256"]), skipped)


def _decode_uncached(paths: list[str], image_size: int, prep: Preprocessing, desc: str
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode into one preallocated uint8 array (no per-image list of arrays: a large set is held once); a
    high-bit-depth file is kept aside as float and, if there is one, the set is stored as float16 throughout."""
    n = len(paths)
    buf = np.zeros((n, image_size, image_size), dtype=np.uint8)
    high: dict[int, np.ndarray] = {}
    sha: list[str | None] = [None] * n
    bad: dict[int, BadImage] = {}

    def work(i: int) -> None:
        try:
            a, sha[i] = _decode_one(paths[i], image_size, prep)
            if a.dtype == np.uint8:
                buf[i] = a
            else:
                high[i] = a
        except BadImage as exc:
            bad[i] = exc
        except Exception as exc:  # any other decoder failure is still a bad file, not a crash
            bad[i] = BadImage(f"cannot decode ({type(exc).__name__}: {exc})")

    _run_parallel(work, n, desc)
    ok = [i for i in range(n) if i not in bad]
    failed = [(str(paths[i]), str(bad[i])) for i in sorted(bad)]
    if high:  # a set mixing 8-bit and high-bit-depth files is stored as float16 throughout
        stored = np.zeros((len(ok), image_size, image_size), dtype=np.float16)
        for j, i in enumerate(ok):
            a = high.get(i)
            stored[j] = quantize(buf[i].astype(np.float32) / 255.0 if a is None else a, "float16")
    else:
        for j, i in enumerate(ok):  # close the gaps of bad files in place (j <= i)
            if j != i:
                buf[j] = buf[i]
        stored = buf[:len(ok)]
    # an unreadable file (permissions, I/O) may be fixed without changing its size/mtime: do not cache that
    no_store = any(r.startswith(READ_FAILURE) for _, r in failed)
    return ({"stored": stored, "kept": np.asarray(ok, dtype=np.int64)},
            {"failed": failed, "sha256": [sha[i] for i in ok], cache_mod.NO_STORE: no_store})


def _run_parallel(work: Callable[[int], None], n: int, desc: str) -> None:
    show = n >= 2000 and sys.stderr.isatty()
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"decoding {desc}", unit="img", leave=False)
    workers = _workers()
    if workers == 1 or n < 64:
        for i in range(n):
            work(i)
            if bar is not None:
                bar.update(1)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            chunk = 256
            for s in range(0, n, chunk):
                list(pool.map(work, range(s, min(n, s + chunk))))
                if bar is not None:
                    bar.update(min(n, s + chunk) - s)
    if bar is not None:
        bar.close()
