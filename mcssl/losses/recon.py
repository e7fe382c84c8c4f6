"""Reconstruction loss between the clean image and the student's reconstruction."""

from __future__ import annotations

import torch


def pixel_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Patch mask (B, h, w) -> pixel mask broadcast to ``like`` (B, C, H, W)."""
    p = like.shape[-1] // mask.shape[-1]
    return mask[:, None].repeat_interleave(p, -2).repeat_interleave(p, -1).expand_as(like)


def reconstruction_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "l1",
    region: str = "all",
) -> torch.Tensor:
    """recon, target: (B, 3, H, W); mask: (B, H/p, W/p) bool -> scalar.

    ``region="all"`` averages over every pixel (the paper); ``"corrupted"`` only over
    corrupted pixels (the reference code)."""
    err = (
        (recon.float() - target.float()).abs()
        if kind == "l1"
        else (recon.float() - target.float()) ** 2
    )
    if region == "all":
        return err.mean()
    px = pixel_mask(mask, err)
    return (err * px).sum() / px.sum().clamp_min(1)
