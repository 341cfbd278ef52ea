"""Decode image files to one grayscale channel and apply the authors' geometric preprocessing.

One file -> a Pillow image of mode ``L`` (8-bit sources) or ``F`` (high-bit-depth sources, ``[0, 1]``)
(:func:`decode_bytes`, :func:`pil_to_gray`), then :func:`preprocess`:

1. ``crop_top``: drop the top fraction of rows (HealthyGAN's COVID loader: ``crop_top(img, 0.08)``,
   offset ``int(H * fraction)``);
2. ``pad``: constant 0 border of ``pad`` px (Brainomaly: ``np.pad(img, 5)``);
3. ``square``: ``crop`` = central square crop (both authors' ``central_crop``, offset ``int((H - s) / 2)``),
   ``pad`` = pad the short side with 0 (keeps the whole field of view; used for brain slices), ``none``;
4. resize to ``image_size`` with Pillow's antialiased filter (``bilinear`` = torchvision ``T.Resize`` on a
   PIL image, which both authors use). 8-bit images are resized in 8 bits, as the authors' uint8 RGB
   images are, and stored as uint8; high-bit-depth ones in float32 and stored as float16, so a first load
   and a cached load give bit-identical arrays;
5. scale to ``[-1, 1]`` (the authors' ``Normalize(0.5, 0.5)``): :func:`to_model_range`.

Deviation from the authors: they keep 3 RGB channels; every medical source here is grayscale stored in 1 or
3 identical channels, so we decode to one luminance channel (ITU-R 601, Pillow's ``convert("L")``).
High-bit-depth files (16-bit PNG/TIFF, 32-bit ``I``/``F``) are rescaled per image from their min..max
(``high_bit_depth: minmax``, default) because clinical 16-bit files usually hold 10-12-bit data; Pillow's
``convert("L")`` would clip them at 255 (a common silent bug). ``high_bit_depth: full_range`` divides by
the type's maximum instead. Transparent images are composited on black (``alpha: black``) or their alpha
is dropped (``alpha: drop``).

Unreadable, truncated or absurdly sized files raise :class:`DataError` naming the file and the fix, or
with ``on_bad_image="skip"`` are left out and listed as ``(path, reason)``.
"""

from __future__ import annotations

import io
import math
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile

from anomaly_bench.core.config import check_keys
from anomaly_bench.core.errors import ConfigError, DataError
from anomaly_bench.core.image_array import to_model_range  # noqa: F401  (re-exported: the decoder's conversion)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently grey-filled

#: File extensions decoded by Pillow (NIfTI volumes are read by :func:`read_volume`).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm")
NIFTI_EXTENSIONS = (".nii", ".nii.gz")

ON_BAD_IMAGE = ("error", "skip")
RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "area": Image.Resampling.BOX}

BAD_IMAGE_FIX = ("replace or re-export the file, delete it, or set `on_bad_image: skip` in the dataset card "
                 "(CLI: --on-bad-image skip) to leave such files out")


READ_FAILURE = "cannot read the file"


class BadImage(Exception):
    """One file could not be used; ``str(exc)`` is the reason (the caller adds the path and the fix)."""


@dataclass(frozen=True)
class Preprocessing:
    """Geometric/intensity preprocessing of one image; the card's ``preprocessing`` section."""

    crop_top: float = 0.0
    pad: int = 0
    square: str = "crop"
    resample: str = "bilinear"
    high_bit_depth: str = "minmax"
    alpha: str = "black"
    min_side: int = 8
    max_side: int = 16384
    max_aspect: float = 10.0

    def __post_init__(self) -> None:
        where = "preprocessing"
        if not (isinstance(self.crop_top, (int, float)) and 0.0 <= self.crop_top < 0.5):
            raise ConfigError(f"{where}.crop_top must be a fraction in [0, 0.5), got {self.crop_top!r}")
        if not (isinstance(self.pad, int) and not isinstance(self.pad, bool) and 0 <= self.pad <= 1024):
            raise ConfigError(f"{where}.pad must be an integer number of pixels in [0, 1024], got {self.pad!r}")
        for key, allowed in (("square", ("crop", "pad", "none")), ("resample", tuple(RESAMPLE)),
                             ("high_bit_depth", ("minmax", "full_range")), ("alpha", ("black", "drop"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{where}.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if not (isinstance(self.min_side, int) and isinstance(self.max_side, int) and 1 <= self.min_side
                <= self.max_side):
            raise ConfigError(f"{where}: need integers 1 <= min_side <= max_side, got {self.min_side}, {self.max_side}")
        if not (isinstance(self.max_aspect, (int, float)) and self.max_aspect >= 1):
            raise ConfigError(f"{where}.max_aspect must be a number >= 1, got {self.max_aspect!r}")

    @classmethod
    def keys(cls) -> set[str]:
        return {"crop_top", "pad", "square", "resample", "high_bit_depth", "alpha", "min_side", "max_side",
                "max_aspect"}

    @classmethod
    def from_card(cls, section: dict | None, where: str = "preprocessing") -> "Preprocessing":
        section = dict(section or {})
        check_keys(section, cls.keys(), where)
        if "max_aspect" in section and isinstance(section["max_aspect"], int):
            section["max_aspect"] = float(section["max_aspect"])
        if "crop_top" in section and isinstance(section["crop_top"], int):
            section["crop_top"] = float(section["crop_top"])
        return cls(**section)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- decoding
def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (Pillow's ``convert("L")`` weights) of a float ``(H, W, 3)`` array."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _high_bit(a: np.ndarray, mode: str, full_range_max: float) -> np.ndarray:
    a = a.astype(np.float64)
    if mode == "full_range" and full_range_max > 0 and a.min() >= 0 and a.max() <= full_range_max:
        return a / full_range_max
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise BadImage("contains NaN or infinite pixel values")
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _f_image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")


def _l_image(a01: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(a01 * 255.0), 0, 255).astype(np.uint8), mode="L")


def pil_to_gray(im: Image.Image, prep: Preprocessing = Preprocessing()) -> Image.Image:
    """Convert a loaded Pillow image of any mode to one grayscale channel: mode ``L`` (uint8) for sources of
    at most 8 bits per channel, mode ``F`` (float32 in ``[0, 1]``) for high-bit-depth sources."""
    mode = im.mode
    if mode == "L":
        return im
    if mode == "1":
        return im.convert("L")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return _f_image(_high_bit(np.asarray(im), prep.high_bit_depth, 65535.0))
    if mode == "I":
        a = np.asarray(im)
        full = 65535.0 if a.size and a.min() >= 0 and a.max() <= 65535 else float(2**31 - 1)
        return _f_image(_high_bit(a, prep.high_bit_depth, full))
    if mode == "F":
        return _f_image(_high_bit(np.asarray(im), "minmax", 0.0))
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
    if mode in ("LA", "La"):
        if prep.alpha == "drop":
            return im.convert("LA").getchannel(0)
        a = np.asarray(im.convert("LA"), dtype=np.float32) / 255.0
        return _l_image(a[..., 0] * a[..., 1])
    if mode in ("RGBA", "RGBa"):
        if prep.alpha == "drop":
            return im.convert("RGB").convert("L")
        a = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return _l_image(_luminance(a[..., :3]) * a[..., 3])
    if mode != "RGB":  # CMYK, YCbCr, LAB, HSV, RGBX ...
        im = im.convert("RGB")
    return im.convert("L")


def gray_to_array(im: Image.Image) -> np.ndarray:
    """Mode ``L`` or ``F`` image -> float32 ``(H, W)`` in ``[0, 1]``."""
    a = np.asarray(im, dtype=np.float32)
    return a / np.float32(255.0) if im.mode == "L" else a


def check_size(width: int, height: int, prep: Preprocessing = Preprocessing()) -> None:
    """Raise :class:`BadImage` for absurd sizes (before the pixels are decoded)."""
    if min(width, height) < prep.min_side:
        raise BadImage(f"image is {width}x{height} px, smaller than the minimum side of {prep.min_side} px "
                       f"(preprocessing.min_side)")
    if max(width, height) > prep.max_side:
        raise BadImage(f"image is {width}x{height} px, larger than the maximum side of {prep.max_side} px "
                       f"(preprocessing.max_side)")
    if max(width, height) / min(width, height) > prep.max_aspect:
        raise BadImage(f"image is {width}x{height} px: aspect ratio above {prep.max_aspect:g} "
                       f"(preprocessing.max_aspect)")


def decode_bytes(data: bytes, prep: Preprocessing = Preprocessing()) -> Image.Image:
    """Decode the bytes of one image file to a mode ``L`` or ``F`` image (see :func:`pil_to_gray`); raises
    :class:`BadImage` with the reason."""
    if not data:
        raise BadImage("the file is empty (0 bytes)")
    try:  # (no warnings.catch_warnings here: it is not thread-safe; check_size bounds the pixel count)
        im = Image.open(io.BytesIO(data))
        check_size(*im.size, prep)
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        if im.format == "JPEG" and im.mode in ("RGB", "YCbCr"):
            im.draft("L", im.size)  # decode only the luma channel at full size: same L values, faster
        im.load()
    except BadImage:
        raise
    except Image.UnidentifiedImageError:
        raise BadImage("not a readable image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise BadImage(f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from None
    return pil_to_gray(im, prep)


def read_gray(path: str | Path, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """Decode one image file to ``float32 (H, W)`` in ``[0, 1]``; raises :class:`DataError` naming the file."""
    path = Path(path)
    try:
        return gray_to_array(decode_bytes(path.read_bytes(), prep))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); check that it exists and is readable") from None
    except BadImage as exc:
        raise DataError(f"{path}: {exc}; {BAD_IMAGE_FIX}") from None


def read_volume(path: str | Path, canonical: bool = True) -> np.ndarray:
    """Read a NIfTI volume with nibabel as ``float32 (X, Y, Z)`` (RAS+ orientation when ``canonical``:
    axis 2 is inferior->superior, so axial slices are ``vol[:, :, k]``). 4-D files use their first volume."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        if canonical:
            img = nib.as_closest_canonical(img)
        vol = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise DataError(f"{path}: cannot read the NIfTI volume ({type(exc).__name__}: {exc}); replace the file "
                        f"or set `on_bad_image: skip` in the dataset card") from None
    if vol.ndim == 4:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    return vol


# ------------------------------------------------------------------------------------------ preprocessing
def central_crop_box(h: int, w: int) -> tuple[int, int, int, int]:
    """The authors' ``central_crop`` as a (left, upper, right, lower) box (offsets truncated toward zero)."""
    size = min(h, w)
    oh, ow = int((h - size) / 2), int((w - size) / 2)
    return ow, oh, ow + size, oh + size


def _pad(im: Image.Image, top: int, left: int, h: int, w: int) -> Image.Image:
    out = Image.new(im.mode, (w, h), 0)
    out.paste(im, (left, top))
    return out


def preprocess(im: Image.Image | np.ndarray, image_size: int, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """crop_top, pad, square and antialiased resize of a grayscale image. A mode ``L`` image gives uint8
    ``(S, S)`` (resized in 8 bits like the authors' uint8 RGB pipeline); mode ``F`` or a float array in
    ``[0, 1]`` gives float32 ``(S, S)`` in ``[0, 1]``."""
    if isinstance(im, np.ndarray):
        im = _f_image(im)
    w, h = im.size
    if prep.crop_top > 0:
        off = int(h * prep.crop_top)
        im, h = im.crop((0, off, w, h)), h - off
    if prep.pad > 0:
        p = prep.pad
        im, h, w = _pad(im, p, p, h + 2 * p, w + 2 * p), h + 2 * p, w + 2 * p
    if prep.square == "crop" and h != w:
        im = im.crop(central_crop_box(h, w))
    elif prep.square == "pad" and h != w:
        s = max(h, w)
        im = _pad(im, (s - h) // 2, (s - w) // 2, s, s)
    if min(im.size) < 1:
        raise BadImage(f"nothing left after preprocessing (size {im.size})")
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), RESAMPLE[prep.resample])
    if im.mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    return np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)


def quantize(img01: np.ndarray, dtype: str) -> np.ndarray:
    """``[0, 1]`` float -> storage type (``uint8`` or ``float16``)."""
    if dtype == "uint8":
        return np.clip(np.rint(img01 * 255.0), 0, 255).astype(np.uint8)
    return img01.astype(np.float16)


def walk(root: str | Path) -> Iterator[tuple[str, list[str]]]:
    """``(folder, sorted non-hidden file names)`` for ``root`` and every non-hidden folder below it, sorted;
    follows symbolic links but visits each real folder once (no endless loop on a link cycle)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield dirpath, sorted(f for f in filenames if not f.startswith("."))


def is_image_name(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """True for a non-hidden file name ending in one of ``extensions`` (case-insensitive)."""
    name = name.lower()
    return not name.startswith(".") and name.endswith(tuple(extensions))
