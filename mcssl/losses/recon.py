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


def texture_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error against targets standardised per feature over all tokens of the
    batch, so the term's size does not depend on the statistics' units.
    pred, target: (B, N, D) -> scalar."""
    t = target.float().flatten(0, 1)
    t = (t - t.mean(0)) / t.std(0).clamp_min(1e-6)
    return ((pred.float().flatten(0, 1) - t) ** 2).mean()


def norm_pix(x: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """MAE's norm-pix target: each patch cell's pixels (all channels together) shifted to mean
    0 and scaled to std 1, so a patch's brightness and contrast are not what is predicted.
    x: (B, C, H, W) -> same shape."""
    b, c, h, w = x.shape
    cells = x.float().reshape(b, c, h // patch, patch, w // patch, patch)
    mean = cells.mean(dim=(1, 3, 5), keepdim=True)
    var = cells.var(dim=(1, 3, 5), keepdim=True, correction=0)
    return ((cells - mean) / (var + eps).sqrt()).reshape(b, c, h, w).to(x.dtype)
