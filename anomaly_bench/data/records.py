"""The one in-memory dataset type every loader returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from anomaly_bench.core.errors import DataError
from anomaly_bench.core.image_array import ImageArray

HEALTHY, DISEASED = 0, 1

#: Roles a loader may pre-assign from the dataset's own layout/split files.
PREDEFINED_ROLES = ("", "train", "test", "mixed", "healthy")


@dataclass
class ImageDataset:
    """Labelled images, decoded once.

    * ``images``: ``(N, 1, H, W)`` :class:`ImageArray`: stored compactly (uint8 / float16 as decoded, possibly
      memory-mapped from the decode cache; or float32 in ``[-1, 1]``); indexing gives float32 ``[-1, 1]``
      tensors. A float tensor given here is kept as float32.
    * ``labels``: ``(N,)`` int64, 0 = healthy, 1 = diseased (hidden from methods for set A).
    * ``ids``: unique id per image (relative path, or ``"<split>/<index>"``).
    * ``subjects``: subject/patient id per image, or ``None`` when the data has none (each image is its
      own subject). Splits never put one subject in two roles.
    * ``masks``: optional ``(N, H, W)`` bool lesion masks (pixel metrics).
    * ``roles``: optional predefined roles from the dataset's own split (``PREDEFINED_ROLES``).
    * ``dup_groups``: optional ``(N,)`` int; images sharing a value ≥ 0 are (near-)duplicates and are
      kept in one role.
    * ``classes``: optional original class name per image (e.g. ``glioma``).
    """

    name: str
    images: ImageArray
    labels: np.ndarray
    ids: list[str]
    subjects: list[str] | None = None
    masks: np.ndarray | None = None
    roles: np.ndarray | None = None
    dup_groups: np.ndarray | None = None
    classes: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _fingerprint: tuple[Any, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise DataError(f"dataset '{self.name}': no images were found; check the data root and the class mapping")
        if self.images.ndim != 4 or self.images.shape[1] != 1:
            raise DataError(f"dataset '{self.name}': images must be (N, 1, H, W), got {tuple(self.images.shape)}")
        if not isinstance(self.images, ImageArray):
            self.images = ImageArray(torch.as_tensor(self.images).float().contiguous())
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        for attr in ("labels", "ids", "subjects", "masks", "roles", "dup_groups", "classes"):
            v = getattr(self, attr)
            if v is not None and len(v) != n:
                raise DataError(f"dataset '{self.name}': {attr} has {len(v)} entries for {n} images")
        if len(set(self.ids)) != n:
            raise DataError(f"dataset '{self.name}': image ids are not unique")
        bad = set(np.unique(self.labels)) - {HEALTHY, DISEASED}
        if bad:
            raise DataError(f"dataset '{self.name}': labels must be 0 (healthy) or 1 (diseased), found {sorted(bad)}")
        if self.roles is not None:
            self.roles = np.asarray(self.roles, dtype=object)
            unknown = set(self.roles) - set(PREDEFINED_ROLES)
            if unknown:
                raise DataError(f"dataset '{self.name}': unknown predefined roles {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def subject_ids(self) -> list[str]:
        return list(self.subjects) if self.subjects is not None else list(self.ids)

    def fingerprint(self) -> str:
        """sha256 over pixels, labels and ids: two runs on the same data print the same value. Computed once per
        dataset object (streamed over the images; every job of a run records it)."""
        key = (id(self.images), self.labels.tobytes(), tuple(self.ids))
        if self._fingerprint is not None and self._fingerprint[0] == key:
            return self._fingerprint[1]
        h = hashlib.sha256()
        self.images.fingerprint_update(h)
        h.update(self.labels.tobytes())
        h.update("\n".join(self.ids).encode())
        self._fingerprint = (key, h.hexdigest()[:16])
        return self._fingerprint[1]

    def subset(self, idx: np.ndarray) -> "ImageDataset":
        idx = np.asarray(idx, dtype=np.int64)

        def pick(v):
            if v is None:
                return None
            if isinstance(v, list):
                return [v[i] for i in idx]
            return v[idx]

        return ImageDataset(self.name, self.images.take(idx), self.labels[idx],
                            pick(self.ids), pick(self.subjects), pick(self.masks), pick(self.roles),
                            pick(self.dup_groups), pick(self.classes), dict(self.meta))

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "n_images": len(self), "n_healthy": int((self.labels == 0).sum()),
                "n_diseased": int((self.labels == 1).sum()), "n_subjects": len(set(self.subject_ids)),
                "image_size": self.image_size, "has_masks": self.masks is not None}
