"""GMML: group-masked corruption of connected, patch-aligned blocks, batched on the device.

Every image gets a target ratio r ~ U[low, high] and exactly round(r * N) corrupted patches.
Patches are taken block by block: candidate rectangles are drawn on the patch grid, and each
patch is ranked by the first block that covers it (then raster order inside the image). The
lowest ranks are corrupted, so whole blocks are taken in order and at most the last one is
cut; when the blocks cover too little, random patches top the count up. With 128 candidate
blocks that is rare in fact: measured (tests/test_gmml.py) on a 14 x 14 grid at ratios
0.4-0.8, 0 of 4096 images need a top-up (with 32 blocks: 61 % of images, 13 % of the
corrupted patches); on a 28 x 28 grid 0.3 % of images. Each block is dropped (noise, or
zeros = the mean colour, as the reference), replaced (same region from another image of
the batch, never the image itself) or recoloured (per-channel gain and shift); the
transformation is drawn per block, or once per image (the reference: each image is either
dropped or replaced), optionally with its own ratio range for replaced images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DROP, REPLACE, COLOUR = 0, 1, 2


@dataclass(frozen=True)
class GMMLParams:
    ratio: tuple[float, float] = (0.4, 0.8)
    max_block_frac: float = 0.3
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # drop, replace, colour
    n_blocks: int = 128  # candidate blocks per image: top-up rare up to ratio 0.8 (above)
    drop_fill: str = "noise"  # noise | zeros (normalised space: zeros = the mean colour)
    per_image: bool = False  # one transformation per image instead of one per block
    replace_ratio: tuple[float, float] | None = None  # per_image: ratio range of replaced ones


def _rand(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=device)


def _blocks(b: int, gh: int, gw: int, p: GMMLParams, g: torch.Generator, device):
    """Random rectangles on the patch grid -> top, left, height, width, each (B, M)."""
    m = p.n_blocks
    max_h = max(1, round(p.max_block_frac * gh))
    max_w = max(1, round(p.max_block_frac * gw))
    # log-uniform area and aspect ratio, clamped to the allowed sides
    area = torch.exp(_rand((b, m), g, device) * torch.log(torch.tensor(max_h * max_w + 1.0)))
    aspect = torch.exp((_rand((b, m), g, device) - 0.5) * 2 * 1.2)
    h = (area * aspect).sqrt().round().clamp(1, max_h)
    w = (area / aspect).sqrt().round().clamp(1, max_w)
    top = (_rand((b, m), g, device) * (gh - h + 1)).floor()
    left = (_rand((b, m), g, device) * (gw - w + 1)).floor()
    return top, left, h, w


def block_mask(
    b: int,
    gh: int,
    gw: int,
    p: GMMLParams,
    g: torch.Generator,
    device: torch.device,
    ratio: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> mask (B, gh, gw) bool, block_id (B, gh, gw) long (index of the covering block, or
    n_blocks for top-up patches). ``ratio``: per-image (low, high), each (B,); default
    ``p.ratio`` for all."""
    n, m = gh * gw, p.n_blocks
    top, left, h, w = _blocks(b, gh, gw, p, g, device)
    rows = torch.arange(gh, device=device).view(1, 1, gh, 1)
    cols = torch.arange(gw, device=device).view(1, 1, 1, gw)
    inside = (
        (rows >= top[..., None, None])
        & (rows < (top + h)[..., None, None])
        & (cols >= left[..., None, None])
        & (cols < (left + w)[..., None, None])
    )  # (B, M, gh, gw)
    covered = inside.any(1)
    first = torch.where(covered, inside.int().argmax(1), m)  # first covering block, else m
    raster = torch.arange(n, device=device).view(1, gh, gw).float()
    noise = _rand((b, gh, gw), g, device) * n  # random order among uncovered patches
    rank = first.float() * n + torch.where(covered, raster, noise)
    lo, hi = p.ratio if ratio is None else ratio
    target = ((lo + (hi - lo) * _rand((b,), g, device)) * n).round().long()  # (B,)
    order = rank.view(b, n).argsort(1).argsort(1)  # position of each patch in its ranking
    mask = (order < target[:, None]).view(b, gh, gw)
    return mask, first


def gmml_corrupt(
    x: torch.Tensor, patch: int, p: GMMLParams, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, 3, H, W) normalised images -> corrupted (B, 3, H, W), mask (B, H/p, W/p) bool.

    All random numbers come from ``g`` (which must live on ``x.device``)."""
    b, c, hh, ww = x.shape
    gh, gw = hh // patch, ww // patch
    dev = x.device
    m1 = p.n_blocks + 1  # + the pseudo-block of top-up patches
    weights = torch.tensor(p.weights, device=dev, dtype=torch.float)
    if p.per_image:  # one transformation per image; replaced images may have their own ratio
        kind = torch.multinomial(weights.expand(b, 3), 1, generator=g).expand(b, m1)
        ratio = None
        if p.replace_ratio is not None:
            rep = kind[:, 0] == REPLACE
            lo = torch.where(rep, p.replace_ratio[0], p.ratio[0])
            ratio = (lo, torch.where(rep, p.replace_ratio[1], p.ratio[1]))
        mask, block = block_mask(b, gh, gw, p, g, dev, ratio)
    else:
        mask, block = block_mask(b, gh, gw, p, g, dev)
        kind = torch.multinomial(weights.expand(b * m1, 3), 1, generator=g).view(b, m1)
    if b < 2:  # nothing to copy from: replace falls back to drop
        kind = torch.where(kind == REPLACE, DROP, kind)
    gain = 0.5 + _rand((b, m1, c), g, dev)  # per-block colour distortion
    shift = _rand((b, m1, c), g, dev) - 0.5
    # donor image for every sample: a random non-zero offset, so never the image itself
    donor = (
        torch.arange(b, device=dev) + torch.randint(1, max(b, 2), (b,), generator=g, device=dev)
    ) % b
    if p.drop_fill == "zeros":
        noise = torch.zeros_like(x)
    else:
        noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)

    def up(t: torch.Tensor) -> torch.Tensor:  # (B, [C,] gh, gw) -> pixel resolution
        return t.repeat_interleave(patch, -2).repeat_interleave(patch, -1)

    kind_px = up(torch.gather(kind, 1, block.view(b, -1)).view(b, 1, gh, gw))
    idx = block.view(b, 1, -1).expand(b, c, -1)
    gain_px = up(torch.gather(gain.transpose(1, 2), 2, idx).view(b, c, gh, gw)).to(x.dtype)
    shift_px = up(torch.gather(shift.transpose(1, 2), 2, idx).view(b, c, gh, gw)).to(x.dtype)
    corrupted = torch.where(kind_px == DROP, noise, x)
    corrupted = torch.where(kind_px == REPLACE, x[donor], corrupted)
    corrupted = torch.where(kind_px == COLOUR, x * gain_px + shift_px, corrupted)
    corrupted = torch.where(up(mask[:, None]), corrupted, x)
    return corrupted, mask
