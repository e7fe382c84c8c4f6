"""GMML corruption: ratio, patch alignment, block transformations, reproducibility, shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mcssl.train.gmml import GMMLParams, gmml_corrupt

GRIDS = [(32, 32, 8, 8), (64, 64, 8, 6), (224, 224, 16, 4), (32, 48, 8, 5)]  # H, W, patch, B
SEEDS = [0, 1, 123]


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Continuous random images: no two pixels / images coincide by chance."""
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(10_000 + seed))


def _corrupt(x: torch.Tensor, patch: int, p: GMMLParams, seed: int):
    return gmml_corrupt(x, patch, p, torch.Generator().manual_seed(seed))


def _patches(t: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, gh, gw, C, p, p)."""
    b, c, h, w = t.shape
    return t.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)


def _assert_patch_aligned(x: torch.Tensor, out: torch.Tensor, mask: torch.Tensor, patch: int):
    """Every value of a corrupted patch changed; every value outside the mask is bit-identical
    (random continuous images, so an unchanged value inside a block has probability 0)."""
    assert mask.any()  # not vacuous
    changed = _patches(out != x, patch).flatten(3)  # (B, gh, gw, C*p*p)
    assert changed[mask].all()
    assert not changed[~mask].any()
    px = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None].expand_as(x)
    assert torch.equal(out[~px], x[~px])


@pytest.mark.parametrize("h,w,patch,b", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ratio", [(0.4, 0.8), (0.1, 0.3), (0.6, 0.6)])
def test_corrupted_fraction_within_ratio(h, w, patch, b, seed, ratio):
    x = _images(b, h, w, seed)
    _, mask = _corrupt(x, patch, GMMLParams(ratio=ratio), seed)
    n = (h // patch) * (w // patch)
    lo, hi = math.floor(ratio[0] * n), math.ceil(ratio[1] * n)
    counts = mask.view(b, -1).sum(1).tolist()
    assert all(lo <= c <= hi for c in counts), (counts, lo, hi)


@pytest.mark.parametrize("h,w,patch,b", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_dtype_shape_and_patch_alignment(h, w, patch, b, seed):
    x = _images(b, h, w, seed)
    out, mask = _corrupt(x, patch, GMMLParams(), seed)  # all three transformations
    assert mask.dtype == torch.bool
    assert mask.shape == (b, h // patch, w // patch)
    assert out.shape == x.shape and out.dtype == x.dtype
    _assert_patch_aligned(x, out, mask, patch)


@pytest.mark.parametrize("h,w,patch,b", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_replace_copies_same_region_from_another_image(h, w, patch, b, seed):
    x = _images(b, h, w, seed)
    out, mask = _corrupt(x, patch, GMMLParams(weights=(0.0, 1.0, 0.0)), seed)
    _assert_patch_aligned(x, out, mask, patch)
    xp, op = _patches(x, patch).flatten(3), _patches(out, patch).flatten(3)
    # same[i, j, gi, gj]: patch (gi, gj) of output i equals patch (gi, gj) of input j
    same = (op[:, None] == xp[None]).all(-1)
    own = same.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (B, gh, gw)
    other = (same & ~torch.eye(b, dtype=torch.bool)[:, :, None, None]).any(1)
    assert other[mask].all(), "a replaced patch is not a copy of another image's same region"
    assert not own[mask].any(), "a replaced patch was copied from its own image"


@pytest.mark.parametrize("h,w,patch,b", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_drop_is_noise_matching_no_image(h, w, patch, b, seed):
    x = _images(b, h, w, seed)
    out, mask = _corrupt(x, patch, GMMLParams(weights=(1.0, 0.0, 0.0)), seed)
    _assert_patch_aligned(x, out, mask, patch)
    xp, op = _patches(x, patch).flatten(3), _patches(out, patch).flatten(3)
    # no corrupted patch equals the same region of any image (its own included) ...
    same = (op[:, None] == xp[None]).all(-1).any(1)  # (B, gh, gw)
    assert not same[mask].any()
    # ... and hardly any single value coincides (only float32 chance collisions)
    eq = (op[:, None] == xp[None]).any(1)[mask]
    assert eq.float().mean().item() < 1e-4
    noise = op[mask]
    assert abs(noise.mean().item()) < 0.2 and 0.8 < noise.std().item() < 1.2  # ~ N(0, 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_colour_is_per_channel_affine_of_the_patch(seed):
    x, patch = _images(4, 64, 64, seed), 8
    out, mask = _corrupt(x, patch, GMMLParams(weights=(0.0, 0.0, 1.0)), seed)
    _assert_patch_aligned(x, out, mask, patch)
    a = _patches(x, patch)[mask].flatten(2).double()  # (n, C, p*p)
    y = _patches(out, patch)[mask].flatten(2).double()
    # least-squares fit y = gain * a + shift per patch and channel
    am, ym = a.mean(-1, keepdim=True), y.mean(-1, keepdim=True)
    gain = ((a - am) * (y - ym)).sum(-1, keepdim=True) / ((a - am) ** 2).sum(-1, keepdim=True)
    shift = ym - gain * am
    assert gain.numel() > 0
    assert ((gain >= 0.5 - 1e-4) & (gain <= 1.5 + 1e-4)).all()
    assert ((shift >= -0.5 - 1e-4) & (shift <= 0.5 + 1e-4)).all()
    torch.testing.assert_close(y, gain * a + shift, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w,patch,b", GRIDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_is_bit_identical_other_seed_differs(h, w, patch, b, seed):
    x = _images(b, h, w, seed)
    p = GMMLParams()
    out1, mask1 = _corrupt(x, patch, p, seed)
    out2, mask2 = _corrupt(x, patch, p, seed)
    assert torch.equal(out1, out2) and torch.equal(mask1, mask2)
    out3, mask3 = _corrupt(x, patch, p, seed + 1)
    assert not torch.equal(mask1, mask3)
    assert not torch.equal(out1, out3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weights", [(0.0, 1.0, 0.0), (1.0, 1.0, 1.0)])
def test_batch_of_one_replace_falls_back_to_drop(seed, weights):
    x, patch = _images(1, 32, 32, seed), 8
    out, mask = _corrupt(x, patch, GMMLParams(weights=weights), seed)
    assert mask.shape == (1, 4, 4) and 0.4 * 16 - 1 <= mask.sum() <= 0.8 * 16 + 1
    _assert_patch_aligned(x, out, mask, patch)
    assert torch.isfinite(out).all()
    if weights == (0.0, 1.0, 0.0):  # only drop is left: plain noise, nothing like the image
        xp, op = _patches(x, patch), _patches(out, patch)
        assert not (op[mask] == xp[mask]).any()


def test_corrupted_blocks_are_connected():
    """Blocks, not scattered patches: at ratio 0.3 of a 14x14 grid (59 patches) the mask has
    ~6 4-connected components on average (measured 0.10 components per corrupted patch, at
    most 0.2), while 59 uniformly scattered patches give ~28 (0.47 per patch)."""
    b, patch = 8, 16
    ratios, random_ratios = [], []
    rng = np.random.default_rng(0)
    for seed in range(4):
        x = _images(b, 224, 224, seed)
        _, mask = _corrupt(x, patch, GMMLParams(ratio=(0.3, 0.3)), seed)
        for m in mask.numpy():
            n = int(m.sum())
            assert n == round(0.3 * 196)
            _, comps = ndimage.label(m)  # default structure: 4-connectivity
            ratios.append(comps / n)
            scattered = np.zeros(m.size, bool)
            scattered[rng.permutation(m.size)[:n]] = True
            random_ratios.append(ndimage.label(scattered.reshape(m.shape))[1] / n)
    assert np.mean(ratios) <= 0.2, np.mean(ratios)
    assert max(ratios) <= 0.35, max(ratios)
    assert np.mean(ratios) < 0.5 * np.mean(random_ratios)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_inputs_keep_dtype(dtype):
    x, patch = _images(4, 32, 48, 0).to(dtype), 8
    out, mask = _corrupt(x, patch, GMMLParams(), 0)
    assert out.dtype == dtype and mask.dtype == torch.bool and mask.shape == (4, 4, 6)
    changed = _patches(out != x, patch).flatten(3)
    assert not changed[~mask].any()  # outside the mask: bit-identical
    # inside: nearly every value changed (low precision may round a few back to the input)
    assert changed[mask].float().mean() > 0.9
    assert torch.isfinite(out).all()


def test_top_up_patches_are_rare_on_a_14x14_grid():
    """Random top-up patches (not inside any candidate block) in under 1 % of images at
    ratios 0.4-0.8 on ViT-S/16's 14 x 14 grid (measured 0 of 4096; with 32 candidate blocks
    61 % of images)."""
    from mcssl.train.gmml import block_mask

    p = GMMLParams(ratio=(0.4, 0.8))
    g = torch.Generator().manual_seed(0)
    mask, block = block_mask(1024, 14, 14, p, g, torch.device("cpu"))
    top_up = mask & (block == p.n_blocks)
    assert mask.flatten(1).sum(1).float().mean() > 0.55 * 196  # not vacuous: ~0.6 corrupted
    assert top_up.flatten(1).any(1).float().mean() < 0.01


def test_drop_fill_zeros_and_one_transformation_per_image():
    """The reference's GMML: each image is either dropped (to zeros) at its ratio or replaced
    at ``replace_ratio``; never both, never recoloured."""
    b, patch = 16, 8
    x = _images(b, 64, 64, 0)
    p = GMMLParams(
        ratio=(0.5, 0.5),
        weights=(0.5, 0.5, 0.0),
        drop_fill="zeros",
        per_image=True,
        replace_ratio=(0.25, 0.25),
    )
    out, mask = _corrupt(x, patch, p, 0)
    zero = _patches(out == 0, patch).flatten(3).all(-1)  # (B, gh, gw) patches all zero
    kinds = set()
    for i in range(b):
        n = int(mask[i].sum())
        if zero[i][mask[i]].all():
            kinds.add("drop")
            assert n == 32  # round(0.5 * 64)
        else:
            kinds.add("replace")
            assert not zero[i].any() and n == 16  # round(0.25 * 64)
            donors = [j for j in range(b) if j != i]
            px = mask[i].repeat_interleave(patch, 0).repeat_interleave(patch, 1)
            assert any(torch.equal(out[i][:, px], x[j][:, px]) for j in donors)
    assert kinds == {"drop", "replace"}
