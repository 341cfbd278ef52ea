"""CutPaste and CutPaste-Scar image synthesis (Li et al., CVPR 2021, §3.1-3.2), on grey ``(N, 1, H, W)`` images in
``[0, 1]``, every random number drawn from one seeded ``torch.Generator``.

* :func:`cutpaste`: a rectangle of ``area_ratio`` (default [0.02, 0.15]) of the image area, aspect ratio (width /
  height) log-uniform in ``[r, 1/r]`` (``r`` = 0.3: the paper's (0.3, 1) ∪ (1, 3.3), each side as likely), cut from
  a uniform location of the same image, colour-jittered, pasted at another uniform location.
* :func:`scar`: a thin rectangle ``width`` × ``length`` pixels (integers, default [2, 16] × [10, 25], sizes of a
  256-px image: scaled by ``H / 256``), cut from the same image, colour-jittered, rotated by a uniform angle in
  ``[-rotation, rotation]`` degrees (45) and pasted at a uniform location; only the rotated rectangle is pasted
  (nearest-neighbour sampling, so every pasted value is a jittered source pixel), not its bounding box.
* :func:`color_jitter`: torchvision ``ColorJitter(brightness=s, contrast=s)`` on a grey image (its saturation and
  hue terms change nothing there): brightness factor, then contrast factor towards the mean, each uniform in
  ``[1 - s, 1 + s]``, clipped to ``[0, 1]``. The order is fixed (torchvision draws it at random).

Each function draws a fixed number of uniforms per image whatever the outcome, so the generator's position after a
batch depends on the batch size alone (resumed runs draw what uninterrupted ones draw). Besides the images they
return what was drawn (masks of the pasted pixels, boxes, angles) for tests and figures.
"""

from __future__ import annotations

import math

import torch

#: image side the scar sizes are given for (the paper's 256 x 256 inputs)
REFERENCE_SIZE = 256
#: the classes of each variant, in label order (0 = the unaltered image)
VARIANT_VIEWS = {"cutpaste": ("normal", "cutpaste"), "scar": ("normal", "scar"), "3way": ("normal", "cutpaste", "scar")}


def _uniforms(gen: torch.Generator, n: int, k: int) -> list[list[float]]:
    return torch.rand(n, k, generator=gen, dtype=torch.float64).tolist()


def _factor(u: float, strength: float) -> float:
    return 1.0 + strength * (2.0 * u - 1.0)


def _jitter_one(x: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    x = (x * brightness).clamp(0.0, 1.0)
    return (contrast * x + (1.0 - contrast) * x.mean()).clamp(0.0, 1.0)


def color_jitter(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """Per image: brightness then contrast jitter of ``strength`` (see the module docstring); 2 uniforms per image."""
    u = torch.rand(len(x), 2, generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    b = (1.0 + strength * (2.0 * u[:, 0] - 1.0)).view(-1, 1, 1, 1)
    c = (1.0 + strength * (2.0 * u[:, 1] - 1.0)).view(-1, 1, 1, 1)
    x = (x * b).clamp(0.0, 1.0)
    return (c * x + (1.0 - c) * x.mean(dim=(1, 2, 3), keepdim=True)).clamp(0.0, 1.0)


def _start(u: float, room: int) -> int:
    """A uniform integer in ``[0, room]``."""
    return min(int(u * (room + 1)), room)


def cutpaste(x: torch.Tensor, gen: torch.Generator, area_ratio=(0.02, 0.15), aspect_ratio: float = 0.3,
             jitter: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CutPaste of each image (8 uniforms per image). Returns the images and ``{"mask": (N, H, W) bool of the pasted
    pixels, "src": (N, 4) and "dst": (N, 4) boxes as (top, left, height, width)}``."""
    n, _, h, w = x.shape
    out, mask = x.clone(), torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
    src, dst = torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, 4, dtype=torch.long)
    lo, hi = math.log(aspect_ratio), -math.log(aspect_ratio)
    for i, (ua, ur, sy, sx, ty, tx, ub, uc) in enumerate(_uniforms(gen, n, 8)):
        area = (area_ratio[0] + (area_ratio[1] - area_ratio[0]) * ua) * h * w
        aspect = math.exp(lo + (hi - lo) * ur)
        pw = min(w, max(1, round(math.sqrt(area * aspect))))
        ph = min(h, max(1, round(math.sqrt(area / aspect))))
        y0, x0, y1, x1 = _start(sy, h - ph), _start(sx, w - pw), _start(ty, h - ph), _start(tx, w - pw)
        patch = _jitter_one(x[i, :, y0:y0 + ph, x0:x0 + pw], _factor(ub, jitter), _factor(uc, jitter))
        out[i, :, y1:y1 + ph, x1:x1 + pw] = patch
        mask[i, y1:y1 + ph, x1:x1 + pw] = True
        src[i], dst[i] = torch.tensor([y0, x0, ph, pw]), torch.tensor([y1, x1, ph, pw])
    return out, {"mask": mask, "src": src, "dst": dst}


def scar(x: torch.Tensor, gen: torch.Generator, width=(2, 16), length=(10, 25), rotation: float = 45.0,
         jitter: float = 0.1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CutPaste-Scar of each image (9 uniforms per image). Returns the images and ``{"mask": (N, H, W) bool of the
    pasted pixels, "src": (N, 4) source box (top, left, length, width), "angle": (N,) degrees}``; the pasted
    rectangle's long side (``length``) points along (-sin, cos) of the angle in (x right, y down) pixel axes."""
    n, _, h, w = x.shape
    scale = h / REFERENCE_SIZE
    out, mask = x.clone(), torch.zeros(n, h, w, dtype=torch.bool, device=x.device)
    src, angles = torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, dtype=torch.float64)
    for i, (uw, ul, ua, sy, sx, ty, tx, ub, uc) in enumerate(_uniforms(gen, n, 9)):
        pw = min(w, max(1, round((width[0] + _start(uw, width[1] - width[0])) * scale)))
        pl = min(h, max(1, round((length[0] + _start(ul, length[1] - length[0])) * scale)))
        y0, x0 = _start(sy, h - pl), _start(sx, w - pw)
        patch = _jitter_one(x[i, :, y0:y0 + pl, x0:x0 + pw], _factor(ub, jitter), _factor(uc, jitter))
        theta = rotation * (2.0 * ua - 1.0)
        c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
        bw = min(w, math.ceil(abs(pw * c) + abs(pl * s) - 1e-9) + 1)
        bh = min(h, math.ceil(abs(pw * s) + abs(pl * c) - 1e-9) + 1)
        by, bx = _start(ty, h - bh), _start(tx, w - bw)
        yy, xx = torch.meshgrid(torch.arange(bh, dtype=torch.float64) - (bh - 1) / 2,
                                torch.arange(bw, dtype=torch.float64) - (bw - 1) / 2, indexing="ij")
        iu = torch.floor(c * xx + s * yy + (pw - 1) / 2 + 0.5).long()    # inverse rotation into the patch
        iv = torch.floor(-s * xx + c * yy + (pl - 1) / 2 + 0.5).long()
        inside = ((iu >= 0) & (iu < pw) & (iv >= 0) & (iv < pl)).to(x.device)
        region = out[i, :, by:by + bh, bx:bx + bw]
        region[:, inside] = patch[:, iv.to(x.device)[inside], iu.to(x.device)[inside]]
        mask[i, by:by + bh, bx:bx + bw] = inside
        src[i], angles[i] = torch.tensor([y0, x0, pl, pw]), theta
    return out, {"mask": mask, "src": src, "angle": angles}


def training_views(x: torch.Tensor, variant: str, gen: torch.Generator, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's batch for ``x`` (``(B, 1, S, S)`` in ``[0, 1]``): the images after ``image_jitter``, then
    their CutPaste and/or Scar versions (``VARIANT_VIEWS[variant]``), stacked, and the class labels (``B`` each)."""
    x = color_jitter(x, p["image_jitter"], gen)
    views = [x]
    for kind in VARIANT_VIEWS[variant][1:]:
        if kind == "cutpaste":
            views.append(cutpaste(x, gen, p["area_ratio"], p["aspect_ratio"], p["jitter"])[0])
        else:
            views.append(scar(x, gen, p["scar_width"], p["scar_length"], p["scar_rotation"], p["jitter"])[0])
    labels = torch.arange(len(views), device=x.device).repeat_interleave(len(x))
    return torch.cat(views), labels
