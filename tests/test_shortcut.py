"""Levers against the per-image shortcut (``shortcut.*``): each does what it says, and all are
off unless a recipe turns them on."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from mcssl.config import ConfigError, ShortcutConfig, load_config
from mcssl.losses import CenteredCrossEntropy, norm_pix
from mcssl.losses.concept import sinkhorn_knopp
from mcssl.train.data import UnlabelledImages


def _marginals(q: torch.Tensor) -> torch.Tensor:
    """Share of all target mass per concept, x K (1 = uniform)."""
    k = q.shape[-1]
    col = q.reshape(-1, k).sum(0)
    return col / col.sum() * k


def _peaky_logits(seed: int = 0, rows: int = 512, k: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, k, generator=g) * 0.3
    z[:, :4] += 0.5  # four concepts dominate, as after a collapse to few concepts
    return z


def test_sinkhorn_targets_have_uniform_marginals_over_the_batch() -> None:
    z = _peaky_logits().reshape(8, 64, 32)  # (B, N, K): every token of the batch counts
    q = sinkhorn_knopp(z, 0.04, 100)
    assert q.shape == z.shape
    assert q.sum(-1) == pytest.approx(torch.ones(8, 64), abs=1e-5)  # each row a distribution
    assert _marginals(q) == pytest.approx(torch.ones(32), abs=0.01)
    soft = torch.softmax(z / 0.04, -1)
    assert (_marginals(soft) - 1).abs().max() > 1.0  # softmax alone is far from uniform
    few = (_marginals(sinkhorn_knopp(z, 0.04, 3)) - 1).abs().max()
    assert few < 0.5 * (_marginals(soft) - 1).abs().max()  # 3 iterations: most of the way


def test_sinkhorn_survives_extreme_logits() -> None:
    z = _peaky_logits() * 100  # exp(z / 0.04) overflows float32 without the row shift
    q = sinkhorn_knopp(z, 0.04, 3)
    assert torch.isfinite(q).all() and q.sum(-1) == pytest.approx(torch.ones(512), abs=1e-4)


def _ddp_worker(rank: int, path: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    z = _peaky_logits().reshape(2, 256, 32)[rank]  # each rank holds half the batch
    out[rank] = sinkhorn_knopp(z, 0.04, 100)
    dist.destroy_process_group()


def test_sinkhorn_balances_the_global_batch_under_ddp() -> None:
    """Two gloo processes, each with half the tokens, get the rows that one process with the
    whole batch gets: the balancing is over the global batch, not each rank's share."""
    with tempfile.TemporaryDirectory() as tmp:
        out = mp.Manager().dict()
        mp.spawn(_ddp_worker, args=(os.path.join(tmp, "store"), out), nprocs=2)
        got = torch.cat([out[0], out[1]])
    whole = sinkhorn_knopp(_peaky_logits(), 0.04, 100)
    assert got == pytest.approx(whole, abs=1e-5)
    assert (_marginals(out[0]) - 1).abs().max() > 0.05  # one rank alone is not balanced


def test_image_centring_removes_what_all_tokens_of_an_image_share() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(1, 16, 8, generator=g)
    offsets = torch.randn(3, 1, 8, generator=g) * 2  # an image-specific shift of every token
    z = base + offsets  # (3 images, 16 tokens, 8 concepts)
    full = CenteredCrossEntropy(8, image_centring=1.0).teacher_probs(z, 0.1)
    assert full[0] == pytest.approx(full[1], abs=1e-5) and full[0] == pytest.approx(full[2], abs=1e-5)
    plain = CenteredCrossEntropy(8).teacher_probs(z, 0.1)
    assert (plain[0] - plain[1]).abs().max() > 0.1
    half = CenteredCrossEntropy(8, image_centring=0.5).teacher_probs(z, 0.1)
    want = torch.softmax((z - 0.5 * z.mean(1, keepdim=True)) / 0.1, -1)
    assert half == pytest.approx(want, abs=1e-6)


def test_norm_pix_makes_every_patch_cell_zero_mean_unit_std() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 16, generator=g)
    y = norm_pix(x, 8)
    cells = y.reshape(2, 3, 2, 8, 2, 8)
    assert cells.mean(dim=(1, 3, 5)) == pytest.approx(torch.zeros(2, 2, 2), abs=1e-5)
    assert cells.std(dim=(1, 3, 5), correction=0) == pytest.approx(torch.ones(2, 2, 2), abs=1e-3)
    shifted = x.clone()
    shifted[..., :8, :8] = shifted[..., :8, :8] * 0.5 + 0.2  # one cell's brightness/contrast
    assert norm_pix(shifted, 8) == pytest.approx(y, abs=1e-4)  # ...is not the target any more


def _smooth_grey(seed: int) -> Image.Image:
    """A grey (R = G = B) smooth random field in [0.3, 0.7]: hue and saturation jitter leave it
    grey, brightness / contrast change it affinely, and no two crops look alike."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0.3, 0.7, (6, 6))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((96, 96), 3))
    return Image.fromarray(np.repeat(big[..., None], 3, axis=2))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.mean(0).flatten(), b.mean(0).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm() + 1e-9))


def test_student_colour_views_share_the_crop_but_not_the_colours() -> None:
    cfg = load_config("smoke", ["data.global_crops=2", "shortcut.student_colour=true"])
    ds = UnlabelledImages([_smooth_grey(s) for s in range(6)], cfg, seed=0)
    same, other, colour_gap = [], [], []
    for i in range(6):
        item = ds[(0, i)]
        (t0, t1), (s0, s1) = item["global"], item["student"]
        same += [_corr(t0, s0), _corr(t1, s1)]
        other.append(_corr(t0, s1))  # a different crop of the same image
        colour_gap.append(float((t0.mean() - s0.mean()).abs() + (t0.std() - s0.std()).abs()))
    assert min(same) > 0.9  # the same geometry up to an affine change of grey level (+ blur)
    assert np.mean(other) < 0.6
    assert sum(g > 0.05 for g in colour_gap) >= 4  # and most pairs differ in colour statistics
    off = UnlabelledImages([_smooth_grey(0)], load_config("smoke"), seed=0)[(0, 0)]
    assert off["student"] == []  # off: the student corrupts the teacher's view, as before


def test_levers_are_off_in_every_bundled_recipe_and_checked() -> None:
    for recipe in ("paper_vits16", "demo_cpu", "smoke", "reference_vits16"):
        assert load_config(recipe, ["data.path=x"]).shortcut == ShortcutConfig()
    off = ShortcutConfig()
    assert (off.sinkhorn_iters, off.student_colour, off.image_centring, off.norm_pix) == (
        0,
        False,
        0.0,
        False,
    )
    with pytest.raises(ConfigError, match="image_centring"):
        load_config("smoke", ["shortcut.image_centring=1.5"])
    with pytest.raises(ConfigError, match="pipeline=plain"):
        load_config("smoke", ["shortcut.student_colour=true", "data.pipeline=device"])
