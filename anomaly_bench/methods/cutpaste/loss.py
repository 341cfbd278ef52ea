"""The self-supervised loss of CutPaste: cross-entropy of the class of each view (0 = unaltered image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the views and the fraction classified right."""
    loss = F.cross_entropy(logits, labels)
    acc = (logits.detach().argmax(1) == labels).to(logits.dtype).mean()
    return loss, acc
