"""Asymmetric loss for multi-label classification (Ridnik et al., 2021), as used by the
paper's multi-label fine-tuning: focusing gamma+ on positives, gamma- on negatives, and a
probability margin that discards easy negatives."""

from __future__ import annotations

import torch
from torch import nn


class AsymmetricLoss(nn.Module):
    """``-[y (1-p)^g+ log p + (1-y) q^g- log(1-q)]`` with ``q = max(p - clip, 0)``,
    summed over classes and averaged over the batch."""

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05):
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.clip = gamma_pos, gamma_neg, clip

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """logits, targets: (B, C); targets in {0, 1}."""
        p = torch.sigmoid(logits.float())
        y = targets.float()
        q = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        eps = 1e-8
        pos = y * (1 - p).pow(self.gamma_pos) * p.clamp(min=eps).log()
        neg = (1 - y) * q.pow(self.gamma_neg) * (1 - q).clamp(min=eps).log()
        return -(pos + neg).sum(1).mean()
