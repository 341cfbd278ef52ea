"""Images kept compact and shared: the array every dataset holds and every job reads (issue 24).

An :class:`ImageArray` is ``(N, C, H, W)`` images in their storage type, plus an optional index into them:

* ``uint8`` (0..255, the decode cache's type for 8-bit sources),
* ``float16`` in ``[0, 1]`` (high-bit-depth sources, as the cache stores them),
* ``float32``/``float64`` already in the model range ``[-1, 1]`` (generated or re-normalised images, e.g. the
  phantom or per-subject normalised MRI).

The storage may be a read-only ``numpy.memmap`` of the decode cache, so every job and every Ray worker on a
node reads the same page-cache copy instead of its own float32 expansion (4x the uint8 size). :meth:`take`
gives a view (a split's role, a job's training set) without copying pixels. Indexing (``images[idx]``,
``images[i:j]``) returns a float32 ``[-1, 1]`` torch tensor of just those images: the per-batch conversion.

The conversion is a table lookup (256 entries for ``uint8``, 65,536 for ``float16``) built with
:func:`to_model_range` (the decoder's conversion, owned here), so a batch is bit-identical to the slice of the float32
array the suite held before, on any device. :meth:`to` moves the (selected) stored images to a device, where
batches are then converted: a GPU holds uint8, not float32.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import numpy as np
import torch


def to_model_range(stored: np.ndarray) -> np.ndarray:
    """Storage array (uint8 0..255 or float16 0..1) -> float32 in ``[-1, 1]``."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return stored.astype(np.float32) * np.float32(2.0) - np.float32(1.0)

_STORED = (np.dtype(np.uint8), np.dtype(np.float16))
_TABLES: dict[tuple[str, str], torch.Tensor] = {}


def _table(kind: np.dtype, device: torch.device) -> torch.Tensor:
    """Float32 model-range value of every storage code (uint8: 256; float16: 65,536 bit patterns)."""
    key = (kind.name, str(device))
    if key not in _TABLES:
        codes = np.arange(256, dtype=np.uint8) if kind == np.uint8 else \
            np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
        with np.errstate(invalid="ignore", over="ignore"):
            _TABLES[key] = torch.from_numpy(to_model_range(codes)).to(device)
    return _TABLES[key]


def _codes(x: torch.Tensor) -> torch.Tensor:
    """Lookup indices of stored values (float16 by bit pattern)."""
    if x.dtype == torch.float16:
        return x.view(torch.int16).to(torch.int64) & 0xFFFF
    return x.to(torch.int64)


class ImageArray:
    """Compactly stored images with float32 ``[-1, 1]`` batches on indexing (see the module docstring)."""

    __slots__ = ("stored", "index")

    def __init__(self, stored: np.ndarray | torch.Tensor, index: np.ndarray | torch.Tensor | None = None):
        if isinstance(stored, ImageArray):
            stored, index = stored.stored, stored._compose(index)
        if stored.ndim != 4:
            raise ValueError(f"ImageArray: expected (N, C, H, W) images, got shape {tuple(stored.shape)}")
        self.stored = stored
        self.index = None if index is None else _as_index(index, stored)

    # -- what it looks like --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stored) if self.index is None else len(self.index)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.stored.shape[1:]))

    @property
    def ndim(self) -> int:
        return 4

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the batches it gives (float32, or float64 for float64 storage)."""
        return torch.float64 if self.storage_dtype == np.float64 else torch.float32

    @property
    def storage_dtype(self) -> np.dtype:
        s = self.stored
        return np.dtype(str(s.dtype).replace("torch.", "")) if isinstance(s, torch.Tensor) else s.dtype

    @property
    def device(self) -> torch.device:
        return self.stored.device if isinstance(self.stored, torch.Tensor) else torch.device("cpu")

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the images this array selects, in their storage type."""
        per = int(np.prod(self.stored.shape[1:])) * self.storage_dtype.itemsize
        return per * len(self)

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def __repr__(self) -> str:
        return f"ImageArray({tuple(self.shape)}, stored {self.storage_dtype.name} on {self.device})"

    # -- views -----------------------------------------------------------------------------------
    def _compose(self, idx: Any) -> np.ndarray | torch.Tensor | None:
        """Index into ``stored`` of this view's ``idx`` (None: all of this view)."""
        if idx is None:
            return self.index
        rows = _as_index(idx, self.stored, len(self))
        if self.index is None:
            return rows
        return self.index[rows]

    def take(self, idx: Any) -> "ImageArray":
        """A view of the images ``idx`` (no pixels copied)."""
        return ImageArray(self.stored, self._compose(idx))

    def to(self, device: torch.device | str, *args, **kwargs) -> "ImageArray":
        """These images on ``device`` in their storage type (the CPU: the same array, not a copy)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return ImageArray(torch.as_tensor(self.stored_rows()).to(device))

    def stored_rows(self, idx: Any = None) -> np.ndarray | torch.Tensor:
        """The stored values of the images ``idx`` of this view (all by default), as stored."""
        rows = self._compose(idx)
        if rows is None:
            return self.stored
        if isinstance(self.stored, np.ndarray) and isinstance(rows, torch.Tensor):
            rows = rows.numpy()
        return self.stored[rows]

    # -- float batches ---------------------------------------------------------------------------
    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, torch.Tensor) and idx.ndim == 0:
            idx = int(idx)
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + len(self) if idx < 0 else int(idx)
            if not 0 <= i < len(self):
                raise IndexError(f"index {int(idx)} is out of range for {len(self)} images")
            return self[i:i + 1][0]
        return self.convert(self.stored_rows(idx))

    def convert(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Stored values -> float tensor in ``[-1, 1]`` (on the values' device)."""
        x = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if np.dtype(str(x.dtype).replace("torch.", "")) in _STORED:
            return _table(self.storage_dtype, x.device)[_codes(x)]
        return x.clone() if x.data_ptr() == _ptr(self.stored) else x

    def float(self) -> torch.Tensor:
        """All images of this view as one float32 tensor (a full copy: small sets only)."""
        return self[slice(None)].float()

    def double(self) -> torch.Tensor:
        return self[slice(None)].double()

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Float batches of this view in order, ``batch_size`` images at a time."""
        for i in range(0, len(self), batch_size):
            yield self[i:i + batch_size]

    def fingerprint_update(self, h: "hashlib._Hash", batch_size: int = 1024) -> None:
        """Feed the float32 bytes of every image, in order, to ``h`` (the same digest as hashing the whole
        float32 array at once, without holding it)."""
        for b in self.batches(batch_size):
            h.update(np.ascontiguousarray(b.float().numpy()).tobytes())


def _ptr(x: np.ndarray | torch.Tensor) -> int:
    return x.data_ptr() if isinstance(x, torch.Tensor) else x.__array_interface__["data"][0]


def _as_index(idx: Any, stored: np.ndarray | torch.Tensor, n: int | None = None) -> np.ndarray | torch.Tensor:
    """Row indices (int64; a torch tensor when the storage is a tensor) for a slice, list, array or tensor."""
    n = len(stored) if n is None else n
    if isinstance(idx, slice):
        out: Any = np.arange(n, dtype=np.int64)[idx]
    elif isinstance(idx, torch.Tensor):
        out = idx if idx.dtype != torch.bool else torch.nonzero(idx).flatten()
        out = out.to(torch.int64)
        if isinstance(stored, np.ndarray):
            out = out.cpu().numpy()
    else:
        out = np.asarray(idx)
        out = np.flatnonzero(out) if out.dtype == bool else out.astype(np.int64).reshape(-1)
    if isinstance(stored, torch.Tensor) and not isinstance(out, torch.Tensor):
        out = torch.as_tensor(out, device=stored.device)
    elif isinstance(stored, torch.Tensor):
        out = out.to(stored.device)
    return out


def select(images: torch.Tensor | ImageArray, idx: Any) -> torch.Tensor | ImageArray:
    """``images[idx]``: a view for an :class:`ImageArray` (no pixels copied), a tensor's rows otherwise."""
    return images.take(idx) if isinstance(images, ImageArray) else images[idx]


def batches(images: torch.Tensor | ImageArray, batch_size: int) -> Iterator[torch.Tensor]:
    """Float batches of ``images`` in order (a tensor: its slices; an :class:`ImageArray`: converted batches)."""
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]
