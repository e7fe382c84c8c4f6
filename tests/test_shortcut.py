"""Levers against the per-image shortcut (``shortcut.*``): each does what it says, and all are
off unless a recipe turns them on."""

from __future__ import annotations

import colorsys
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from mcssl.config import ConfigError, ShortcutConfig, load_config
from mcssl.images import cell_texture, denormalise, neighbourhood_mean, texture_dim, texture_map
from mcssl.losses import CenteredCrossEntropy, norm_pix, texture_loss
from mcssl.losses.concept import sinkhorn_knopp
from mcssl.train.data import MEAN, STD, UnlabelledImages
from mcssl.train.device_aug import grey_inputs, mosaic
from mcssl.train.loop import Trainer
from mcssl.train.matching import (
    correspondence,
    crop_with_box,
    cross_image_targets,
    cross_view_loss,
    sample_at,
)


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
    assert full[0] == pytest.approx(full[1], abs=1e-5) and full[0] == pytest.approx(
        full[2], abs=1e-5
    )
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
    assert (
        off["student"] == [] and off["boxes"] == []
    )  # off: the student corrupts the teacher's view, as before


def test_levers_are_off_in_every_bundled_recipe_and_checked() -> None:
    for recipe in ("paper_vits16", "demo_cpu", "smoke", "reference_vits16"):
        assert load_config(recipe, ["data.path=x"]).shortcut == ShortcutConfig()
    off = ShortcutConfig()
    levers = (off.sinkhorn_iters, off.student_colour, off.image_centring, off.norm_pix)
    assert levers == (0, False, 0.0, False) and off.cross_view is False
    assert off.cross_image == 0.0 and off.mosaic is False and off.teacher_grey == 0.0
    assert off.recon_grey == 0.0
    with pytest.raises(ConfigError, match="recon_grey"):
        load_config("smoke", ["shortcut.recon_grey=-0.5"])
    with pytest.raises(ConfigError, match="teacher_grey"):
        load_config("smoke", ["shortcut.teacher_grey=2"])
    with pytest.raises(ConfigError, match="cross_image"):
        load_config("smoke", ["shortcut.cross_image=1.5"])
    with pytest.raises(ConfigError, match="cross_image_centred"):
        load_config("smoke", ["shortcut.cross_image_centred=true"])
    with pytest.raises(ConfigError, match="image_centring"):
        load_config("smoke", ["shortcut.image_centring=1.5"])
    with pytest.raises(ConfigError, match="pipeline=plain"):
        load_config("smoke", ["shortcut.student_colour=true", "data.pipeline=device"])


def _coordinate_image(size: int = 240) -> Image.Image:
    """R = column, G = row (one grey level per pixel): a pixel's colour is where it is."""
    y, x = np.mgrid[0:size, 0:size]
    arr = np.stack([x, y, np.zeros_like(x)], axis=2) * (255 / (size - 1))
    return Image.fromarray(arr.round().astype(np.uint8))


def _token_means(crop: Image.Image, grid: int) -> torch.Tensor:
    """(1, N, 2) mean (R, G) per token cell of a crop."""
    a = torch.from_numpy(np.asarray(crop, np.float32)[..., :2])  # (S, S, 2)
    p = a.shape[0] // grid
    return a.reshape(grid, p, grid, p, 2).mean(dim=(1, 3)).reshape(1, grid * grid, 2)


def test_cross_view_tokens_map_to_the_same_image_location() -> None:
    img, grid = _coordinate_image(), 8
    torch.manual_seed(0)
    checked, flips = 0, set()
    for _ in range(12):
        (ca, ba), (cb, bb) = crop_with_box(img, 64, (0.3, 1.0)), crop_with_box(img, 64, (0.3, 1.0))
        flips.update({int(ba[4]), int(bb[4])})
        loc, valid = correspondence(ba[None], bb[None], grid)
        inner = valid & ((loc > 0.5 / grid) & (loc < 1 - 0.5 / grid)).all(-1)  # no extrapolation
        got = sample_at(_token_means(cb, grid), loc)  # crop b's colours where crop a's tokens are
        want = _token_means(ca, grid)
        assert (got - want)[inner].abs().max() < 3.0  # grey levels of 255: the same place
        checked += int(inner.sum())
    assert checked > 100 and flips == {0, 1}  # mirrored crops were among them


def test_cross_view_loss_with_the_same_crop_is_the_aligned_loss() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 16, 8, generator=g)  # G=2 views x B=2, 4 x 4 tokens, K = 8
    t = torch.softmax(torch.randn(4, 16, 8, generator=g) / 0.1, -1)
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9, 0.0]] * 2)
    got = cross_view_loss(s, t, [box, box], 0.1)
    t_swapped = torch.cat(t.split(2)[::-1])  # view a against view b's targets, token by token
    want = -(t_swapped * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()
    assert got == pytest.approx(float(want), rel=1e-5)
    flipped = box.clone()
    flipped[:, 4] = 1.0  # b is a's mirror image: a's token (r, c) is b's token (r, 3 - c)
    mirror = t.reshape(4, 4, 4, 8).flip(2).reshape(4, 16, 8)
    want = -(torch.cat(mirror.split(2)[::-1]) * torch.log_softmax(s / 0.1, -1)).sum(-1).mean()
    assert cross_view_loss(s, t, [box, flipped], 0.1) == pytest.approx(float(want), rel=1e-5)


def test_cross_view_data_gives_boxes_and_the_config_checks_it() -> None:
    cfg = load_config("smoke", ["data.global_crops=2", "shortcut.cross_view=true"])
    item = UnlabelledImages([_smooth_grey(0)], cfg, seed=0)[(0, 0)]
    assert [b.shape for b in item["boxes"]] == [(5,), (5,)] and item["student"] == []
    assert all(0 <= float(b[0]) < float(b[2]) <= 1 for b in item["boxes"])
    with pytest.raises(ConfigError, match="global_crops >= 2"):
        load_config("smoke", ["data.global_crops=1", "shortcut.cross_view=true"])


def test_cross_image_targets_come_from_the_nearest_token_of_another_image() -> None:
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 9, 16, generator=g)  # V=2 crops x B=3 images, 9 tokens, D = 16
    feats[3:] = feats[:3] + 0.01 * torch.randn(3, 9, 16, generator=g)  # crop 2 ~ crop 1
    probs = torch.softmax(torch.randn(6, 9, 8, generator=g), -1)
    got = cross_image_targets(probs, feats, sources=3)
    f = torch.nn.functional.normalize(feats.reshape(54, 16), dim=-1)
    sim = f @ f.T
    source = (torch.arange(6) % 3).repeat_interleave(9)
    for row in range(54):
        others = (source != source[row]).nonzero().flatten()  # not its image, not its twin crop
        best = others[sim[row, others].argmax()]
        assert torch.equal(got.reshape(54, 8)[row], probs.reshape(54, 8)[best])
    # a token planted as a scaled copy of a token of image 1 takes that token's target
    feats[0, 0] = 3.0 * feats[1, 4]
    assert torch.equal(cross_image_targets(probs, feats, sources=3)[0, 0], probs[1, 4])


def test_centred_cross_image_neighbours_ignore_what_a_whole_image_shares() -> None:
    g = torch.Generator().manual_seed(6)
    parts = torch.randn(4, 16, generator=g)  # four kinds of token, shared by images 0 and 1
    cast = torch.randn(3, 16, generator=g) * 4  # a strong per-image cast (colour, light)
    cast[2] = cast[0] + 0.1 * torch.randn(16, generator=g)  # image 2 looks like image 0
    feats = torch.stack(
        [parts + cast[0], parts + cast[1], torch.randn(4, 16, generator=g) + cast[2]]
    )
    probs = torch.softmax(torch.randn(3, 4, 8, generator=g), -1)
    # uncentred, image 0's tokens all pick the look-alike image 2
    plain = cross_image_targets(probs, feats, sources=3)
    assert all(any(torch.equal(plain[0, j], probs[2, m]) for m in range(4)) for j in range(4))
    # centred, each picks the same kind of token in image 1
    centred = cross_image_targets(probs, feats, sources=3, centred=True)
    assert torch.equal(centred[0], probs[1])


def test_mosaic_puts_four_images_at_their_own_places_in_every_input() -> None:
    b = 5
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 3, 8, 8).clone()
    x += torch.linspace(0, 0.5, 8)[None, None, :, None]  # rows differ: places are checked too
    out = mosaic(x)
    quads = [(0, 0), (0, 4), (4, 0), (4, 4)]  # row-major (top, left) of each 4 x 4 quadrant
    for i in range(b):
        sources = []
        for q, (r, c) in enumerate(quads):
            got = out[i, :, r : r + 4, c : c + 4]
            want = x[(i + q) % b, :, r : r + 4, c : c + 4]  # image i + q, the same place
            assert torch.equal(got, want)
            sources.append(int(got[0, 0, 0]))
        assert len(set(sources)) == 4  # four different images in every input
    with pytest.raises(ConfigError, match="mosaic"):
        load_config("smoke", ["shortcut.mosaic=true", "shortcut.cross_image=0.5"])


def test_grey_inputs_keep_only_luma_and_only_where_asked() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 3, 8, 8, generator=g)  # normalised inputs
    apply = torch.tensor([True, False, True, False])
    out = grey_inputs(x, apply)
    assert torch.equal(out[~apply], x[~apply])
    rgb, grey = denormalise(x[apply]), denormalise(out[apply])
    assert (grey[:, 0] - grey[:, 1]).abs().max() < 1e-5  # no hue left: R = G = B
    assert (grey[:, 1] - grey[:, 2]).abs().max() < 1e-5
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert grey[:, 0] == pytest.approx(luma, abs=1e-5)


def test_teacher_grey_greys_the_teachers_view_only(tmp_path) -> None:
    over = ["shortcut.teacher_grey=1.0", "shortcut.student_colour=true", "optim.warmup_epochs=0"]
    trainer = Trainer(load_config("smoke", over), tmp_path / "grey")
    seen: dict[str, torch.Tensor] = {}

    def recording(fn, key: str):  # keeps what each network was fed, in [0, 1]
        def call(x: torch.Tensor, *rest):
            seen[key] = denormalise(x)
            return fn(x, *rest)

        return call

    trainer.teacher_fwd = recording(trainer.teacher_fwd, "t")
    trainer.model = recording(trainer.model, "s")
    batch = trainer.data.views(next(iter(trainer.data.loader)), 0, trainer.dist.device)
    terms = trainer.train_step(batch)
    assert all(torch.isfinite(v) for v in terms.values())
    t, s = seen["t"], seen["s"]
    assert (t[:, 0] - t[:, 1]).abs().max() < 1e-5 and (t[:, 1] - t[:, 2]).abs().max() < 1e-5
    assert (s[:, 0] - s[:, 1]).abs().max() > 0.05  # the student still sees colour


@pytest.mark.parametrize("grey", [1.0, 0.5, 0.0])
def test_recon_grey_asks_the_decoder_for_luminance_only(tmp_path, grey: float) -> None:
    over = [f"shortcut.recon_grey={grey}", "optim.warmup_epochs=0"]
    trainer = Trainer(load_config("smoke", over), tmp_path / "rg")
    seen: dict[str, torch.Tensor] = {}
    fwd, terms_fn = trainer.teacher_fwd, trainer._loss_terms

    def teacher(x: torch.Tensor):  # the clean view, which is also the student's (no levers)
        seen["view"] = denormalise(x)
        return fwd(x)

    def terms(s, t, target, mask, tt):
        seen["target"] = denormalise(target)
        return terms_fn(s, t, target, mask, tt)

    trainer.teacher_fwd, trainer._loss_terms = teacher, terms
    trainer.train_step(trainer.data.views(next(iter(trainer.data.loader)), 0, trainer.dist.device))
    view, target = seen["view"], seen["target"]
    luma = 0.299 * view[:, 0] + 0.587 * view[:, 1] + 0.114 * view[:, 2]
    as_grey = (target - luma[:, None]).flatten(1).abs().amax(1) < 1e-4  # R = G = B = luma
    as_view = (target - view).flatten(1).abs().amax(1) < 1e-5  # the view itself, as before
    assert bool((as_grey | as_view).all())  # each image's target is one or the other
    coloured = (view[:, 0] - view[:, 1]).flatten(1).abs().amax(1) > 0.05  # has hue to lose
    c, n = int(coloured.sum()), int((as_grey & coloured).sum())
    assert c >= 4 and {1.0: n == c, 0.5: 0 < n < c, 0.0: n == 0}[grey]


def test_grey_input_model_sees_and_reconstructs_luminance_only(tmp_path) -> None:
    from mcssl.checkpoint import export_teacher
    from mcssl.explore.encoder import load_encoder
    from mcssl.images import grey

    over = ["model.grey_input=true", "optim.epochs=1", "run.save_every=1000"]
    trainer = Trainer(load_config("smoke", over), tmp_path / "g")
    seen: dict[str, torch.Tensor] = {}
    terms_fn = trainer._loss_terms

    def terms(s, t, target, mask, tt):
        seen["target"] = denormalise(target)
        return terms_fn(s, t, target, mask, tt)

    trainer._loss_terms = terms
    trainer.fit()
    target = seen["target"]
    assert (target[:, 0] - target[:, 1]).abs().max() < 1e-5  # R = G = B
    assert (target[:, 1] - target[:, 2]).abs().max() < 1e-5
    assert target.std() > 0.05  # luminance is still there
    export_teacher(tmp_path / "g", tmp_path / "g.safetensors")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)  # colourful, normalised
    assert (grey(x) - x).abs().max() > 0.5  # so greying changes the input
    for spec in (tmp_path / "g", tmp_path / "g.safetensors"):  # the run and its export
        enc = load_encoder(spec)
        assert torch.allclose(enc.tokens(x), enc.tokens(grey(x)), atol=1e-5)
    colour = Trainer(load_config("smoke", ["optim.epochs=1"]), tmp_path / "c").student.backbone
    colour.eval()
    assert not torch.allclose(colour.forward_features(x), colour.forward_features(grey(x)))


def _cols(t: torch.Tensor, u: list[float]) -> torch.Tensor:
    """Rows kept, columns interpolated at token units u (clamped to the border), by hand.
    t: (B, 16, K) on a 4 x 4 grid -> (B, 4 * len(u), K)."""
    grid = t.reshape(t.shape[0], 4, 4, -1)
    out = []
    for v in u:
        v = min(max(v, 0.0), 3.0)
        i, w = int(v), v - int(v)
        out.append((1 - w) * grid[:, :, i] + w * grid[:, :, min(i + 1, 3)])
    return torch.stack(out, dim=2).reshape(t.shape[0], -1, t.shape[-1])


def test_cross_view_loss_counts_only_tokens_seen_in_both_crops() -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 16, 8, generator=g)
    t = torch.softmax(torch.randn(4, 16, 8, generator=g) / 0.1, -1)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]] * 2)
    left = torch.tensor([[0.0, 0.0, 1.0, 0.5, 0.0]] * 2)  # view 1 = the left half of view 0
    (s0, s1), (t0, t1) = s.split(2), t.split(2)

    def ce(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -(target * torch.log_softmax(logits / 0.1, -1)).sum(-1)

    # view 0's columns 0, 1 lie in view 1 at token units 0.5, 2.5; columns 2, 3 do not
    seen = s0.reshape(2, 4, 4, 8)[:, :, :2].reshape(2, 8, 8)
    first = ce(_cols(t1, [0.5, 2.5]), seen).mean()
    second = ce(_cols(t0, [-0.25, 0.25, 0.75, 1.25]), s1).mean()  # all of view 1 is in view 0
    got = cross_view_loss(s, t, [whole, left], 0.1)
    assert got == pytest.approx(float((first + second) / 2), rel=1e-5)


def _hue_turns_from_red(view: torch.Tensor) -> float | None:
    """Circular hue distance (turns) of a normalised view's mean colour from pure red; None
    for a grey view (the greyscale draw)."""
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    r, g, b = (view * std + mean).clamp(0, 1).mean((1, 2)).tolist()
    h, s, _ = colorsys.rgb_to_hsv(r, g, b)
    return None if s < 0.2 else min(h, 1 - h)


@pytest.mark.parametrize("student_hue", [0.0, 0.5])
def test_student_hue_widens_only_the_students_hue_jitter(student_hue: float) -> None:
    """A red image: with the default jitter (0.1 turns) every coloured view stays within 0.1
    turns of red; ``shortcut.student_hue=0.5`` lets the student's copy take any hue and
    leaves the teacher's as it was."""
    overrides = ["shortcut.student_colour=true", f"shortcut.student_hue={student_hue}"]
    ds = UnlabelledImages(
        [Image.new("RGB", (96, 96), (220, 30, 30))], load_config("smoke", overrides), 0
    )
    items = [ds[(0, i)] for i in range(60)]
    teacher = [_hue_turns_from_red(it["global"][0]) for it in items]
    student = [_hue_turns_from_red(it["student"][0]) for it in items]
    assert max(h for h in teacher if h is not None) <= 0.1 + 1e-3
    far = sum(h is not None and h > 0.15 for h in student)
    assert far == 0 if student_hue == 0 else far >= 20  # uniform in +-0.5: ~70 % beyond 0.15
    with pytest.raises(ConfigError, match="student_hue"):
        load_config("smoke", ["shortcut.student_hue=0.3"])  # without student_colour


def test_texture_map_is_each_cells_statistics_over_its_neighbourhood_in_row_major_order() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 24, 40, generator=g)  # 3 x 5 cells of 8 px: not square
    cells = [a[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] for i in range(3) for j in range(5)]
    by_hand = neighbourhood_mean(cell_texture(torch.stack(cells))[None], (3, 5))[0]
    got = texture_map(torch.stack([a, b]), 8)
    assert got.shape == (2, 15, texture_dim(8))
    assert torch.allclose(got[0], by_hand, atol=1e-6)
    assert torch.allclose(got[1], texture_map(b[None], 8)[0], atol=1e-6)  # images do not mix
    # built on the input's device (cuda in training), checked here without a GPU on "meta"
    assert texture_map(a[None].to("meta"), 8).device.type == "meta"


@pytest.mark.parametrize("window", [1, 5])
def test_texture_map_window_sets_the_neighbourhood_with_edges_replicated(window: int) -> None:
    a = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(2))  # 3 x 5 cells
    cells = [a[:, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8] for i in range(3) for j in range(5)]
    f = cell_texture(torch.stack(cells)).reshape(3, 5, -1)
    r = window // 2

    def around(i: int, j: int) -> torch.Tensor:  # edge cells repeat, as replicate padding does
        rows = [min(max(i + di, 0), 2) for di in range(-r, r + 1)]
        cols = [min(max(j + dj, 0), 4) for dj in range(-r, r + 1)]
        return torch.stack([f[y, x] for y in rows for x in cols]).mean(0)

    by_hand = torch.stack([around(i, j) for i in range(3) for j in range(5)])
    assert torch.allclose(texture_map(a[None], 8, window)[0], by_hand, atol=1e-6)


def test_texture_loss_ignores_the_statistics_units_and_is_zero_at_the_standardised_target() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(4, 16, 6, generator=g) * torch.tensor([1, 10, 100, 0.1, 1, 1]) + 3
    flat = target.flatten(0, 1)
    standard = ((flat - flat.mean(0)) / flat.std(0)).reshape(target.shape)
    assert texture_loss(standard, target) < 1e-10
    pred = torch.randn(4, 16, 6, generator=g)
    assert texture_loss(pred, target) == pytest.approx(
        float(texture_loss(pred, 7 * target - 2)), rel=1e-5
    )
    assert texture_loss(pred, target) > 0.5


@pytest.mark.parametrize("window", [3, 1])
def test_texture_target_trains_the_tokens_on_the_clean_views_texture(tmp_path, window) -> None:
    over = [
        "shortcut.texture_target=2.0",
        f"shortcut.texture_window={window}",
        "loss.combine=fixed",
        "loss.recon_weight=0",
        "loss.concept_weight=0",
        "optim.epochs=1",
        "run.save_every=1000",
    ]
    trainer = Trainer(load_config("smoke", over), tmp_path / "t")
    assert trainer.student.texture_head.out_features == texture_dim(8)
    seen: dict[str, torch.Tensor] = {}
    terms_fn, step_fn = trainer._loss_terms, trainer.train_step

    def terms(s, t, target, mask, tt):
        seen["pred"], seen["clean"] = s["texture"].detach(), target
        return terms_fn(s, t, target, mask, tt)

    def step(batch):
        out = step_fn(batch)
        # the weighted term against the clean (uncorrupted) view's statistics, and nothing else
        want = 2.0 * texture_loss(seen["pred"], texture_map(seen["clean"], 8, window))
        assert float(out["texture"]) == pytest.approx(float(want), rel=1e-4)
        assert float(out["loss"]) == pytest.approx(float(want), rel=1e-4)
        grads.append(float(trainer.student.backbone.patch_embed.proj.weight.grad.abs().max()))
        return out

    grads: list[float] = []
    trainer._loss_terms, trainer.train_step = terms, step
    trainer.fit()
    assert len(grads) == trainer.total_steps and min(grads) > 0  # the term reaches the backbone
    assert (
        Trainer(load_config("smoke", ["optim.epochs=1"]), tmp_path / "p").student.texture_head
        is None
    )
    with pytest.raises(ConfigError, match="texture_target"):
        load_config("smoke", ["shortcut.texture_target=-1"])
    for bad in (0, 2):
        with pytest.raises(ConfigError, match="texture_window must be odd"):
            load_config("smoke", [f"shortcut.texture_window={bad}"])
