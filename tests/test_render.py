"""Rendering concept maps: palette, overlays, legend, token boxes and crops, strips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mcssl.explore.concepts import K_MAX, upsample_labels
from mcssl.explore.render import (
    PALETTE,
    boundary_mask,
    colourise,
    draw_token_box,
    legend,
    overlay,
    side_by_side,
    token_crop,
)


def random_image(w=64, h=48, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def block_labels(h=48, w=64) -> np.ndarray:
    g = np.array([[0, 1, 1, 2], [0, 3, 2, 2], [4, 5, 6, 7]])
    return upsample_labels(g, (h, w))


def test_palette():
    assert len(PALETTE) >= K_MAX  # every cluster k-means can return has a colour of its own
    assert len(set(PALETTE)) == len(PALETTE)
    for c in PALETTE:
        assert len(c) == 3 and all(0 <= v <= 255 for v in c)


def test_colourise_distinct():
    lab = block_labels()
    col = colourise(lab)
    assert col.shape == (48, 64, 3) and col.dtype == np.uint8
    seen = {}
    for j in range(8):
        colours = np.unique(col[lab == j].reshape(-1, 3), axis=0)
        assert len(colours) == 1
        seen[j] = tuple(colours[0])
        assert seen[j] == PALETTE[j]
    assert len(set(seen.values())) == 8
    with pytest.raises(ValueError):
        colourise(np.zeros(5, dtype=int))
    with pytest.raises(ValueError):
        colourise(-np.ones((2, 2), dtype=int))


def test_overlay_alpha_extremes():
    img, lab = random_image(), block_labels()
    np.testing.assert_array_equal(np.asarray(overlay(img, lab, 0.0, boundaries=False)), img)
    np.testing.assert_array_equal(
        np.asarray(overlay(img, lab, 1.0, boundaries=False)), colourise(lab)
    )
    half = np.asarray(overlay(img, lab, 0.5, boundaries=False)).astype(int)
    expected = np.rint(0.5 * np.asarray(img, dtype=np.float32) + 0.5 * colourise(lab))
    assert np.abs(half - expected).max() <= 1
    assert np.asarray(img).shape == (48, 64, 3)  # input untouched (still the same image)


def test_overlay_boundaries():
    img, lab = random_image(), block_labels()
    out = np.asarray(overlay(img, lab, 0.0, boundaries=True, boundary_colour=(1, 2, 3)))
    mask = boundary_mask(lab)
    assert mask.any() and not mask.all()
    assert np.all(out[mask] == (1, 2, 3))
    np.testing.assert_array_equal(out[~mask], np.asarray(img)[~mask])
    # the boundary is thin: one pixel per label change along a row
    row = lab[5]
    assert mask[5].sum() == np.count_nonzero(row[1:] != row[:-1])
    with pytest.raises(ValueError, match="match"):
        overlay(img, lab[:10], 0.5)
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, lab, 1.5)


def test_overlay_converts_mode():
    img = random_image().convert("L")
    out = overlay(img, block_labels(), 0.3)
    assert out.mode == "RGB" and out.size == img.size


def test_legend():
    a = legend(3)
    b = legend(3, ["sky", "forest floor", "mushroom"])
    assert a.mode == "RGB" and a.height < 60
    assert b.width > a.width  # longer names -> wider strip
    arr = np.asarray(legend(4)).reshape(-1, 3)
    colours = {tuple(c) for c in arr}
    assert all(PALETTE[j] in colours for j in range(4))
    assert PALETTE[4] not in colours
    with pytest.raises(ValueError):
        legend(3, ["a", "b"])


@pytest.mark.parametrize(
    "row,col,ph,pw,width",
    [(1, 2, 10, 10, 2), (0, 0, 16, 16, 1), (2, 3, 7.5, 9.25, 2), (4, 6, 10, 10, 3)],
)
def test_draw_token_box_outline_only(row, col, ph, pw, width):
    img = Image.new("RGB", (64, 48), (10, 20, 30))
    out = np.asarray(draw_token_box(img, row, col, ph, pw, colour=(255, 0, 0), width=width))
    changed = np.any(out != np.asarray(img), axis=2)
    top, left = round(row * ph), round(col * pw)
    bottom, right = round((row + 1) * ph), round((col + 1) * pw)  # end-exclusive
    yy, xx = np.mgrid[0:48, 0:64]
    inside = (yy >= top) & (yy < bottom) & (xx >= left) & (xx < right)
    core = (yy >= top + width) & (yy < bottom - width) & (xx >= left + width)
    core &= xx < right - width
    expected = inside & ~core
    assert expected.sum() > 0
    np.testing.assert_array_equal(changed, expected)
    assert np.all(out[changed] == (255, 0, 0))
    assert np.all(np.asarray(img) == (10, 20, 30))  # input untouched


def test_draw_token_box_outside():
    with pytest.raises(ValueError, match="outside"):
        draw_token_box(random_image(), 10, 0, 16, 16)


@pytest.mark.parametrize("context,size", [(1, 96), (0, 64), (2, 50)])
def test_token_crop(context, size):
    img = random_image(224, 160, seed=1)
    for row, col in [(0, 0), (4, 7), (9, 13)]:
        out = token_crop(img, row, col, 16, 16, context=context, size=size)
        assert out.size == (size, size) and out.mode == "RGB"
    # the box is drawn around the centre token
    out = np.asarray(token_crop(img, 4, 7, 16, 16, context=1, size=96, colour=(255, 0, 0)))
    assert np.all(out[32, 32:64] == (255, 0, 0)) and np.all(out[32:64, 32] == (255, 0, 0))
    # corner token: the margin outside the image is padded with the fill colour
    out = np.asarray(token_crop(img, 0, 0, 16, 16, context=1, size=96, fill=(7, 7, 7)))
    assert np.all(out[:20, :20] == (7, 7, 7))


def test_side_by_side():
    ims = [random_image(64, 48), random_image(32, 48, 1), random_image(100, 50, 2)]
    strip = side_by_side(ims, None, height=48)
    assert strip.size == (64 + 32 + 96 + 2 * 4, 48)
    np.testing.assert_array_equal(np.asarray(strip)[:, :64], np.asarray(ims[0]))
    np.testing.assert_array_equal(np.asarray(strip)[:, 68:100], np.asarray(ims[1]))
    captioned = side_by_side(ims, ["image", "k=2", "k=3"], height=48)
    assert captioned.width == strip.width and captioned.height > 48
    caption_band = np.asarray(captioned)[48:]
    assert np.any(caption_band != 255)  # text drawn
    with pytest.raises(ValueError):
        side_by_side(ims, ["a"], height=48)
    with pytest.raises(ValueError):
        side_by_side([], None, height=48)


def test_overlay_highlight_keeps_the_picked_cluster_bright() -> None:
    from mcssl.explore.render import PALETTE, overlay

    img = Image.new("RGB", (8, 4), (200, 200, 200))
    lab = np.zeros((4, 8), np.int64)
    lab[:, 4:] = 1
    plain = np.asarray(overlay(img, lab, 0.5, boundaries=False), np.int64)
    hi = np.asarray(overlay(img, lab, 0.5, boundaries=False, highlight=1), np.int64)
    want = np.rint(0.3 * 200 + 0.7 * np.array(PALETTE[1]))
    assert np.array_equal(hi[0, 6], want)  # the picked cluster: its colour at 0.7
    dim = np.rint(0.875 * 0.6 * 200 + 0.125 * np.array(PALETTE[0]))
    assert np.array_equal(hi[0, 1], dim)  # the others: faint over a darkened image
    assert np.array_equal(plain[0, 1], np.rint(0.5 * 200 + 0.5 * np.array(PALETTE[0])))


def test_colour_scale_runs_from_the_heatmaps_low_to_high_colour() -> None:
    from mcssl.explore.render import colour_scale, heatmap

    key = np.asarray(colour_scale(-0.2, 1.0, width=200))
    assert key.shape[1] == 200
    img = Image.new("RGB", (2, 1), (0, 0, 0))
    hm = np.asarray(heatmap(img, np.array([[-0.2, 1.0]]), alpha=1.0))
    assert np.array_equal(key[0, 0], hm[0, 0]) and np.array_equal(key[0, -1], hm[0, 1])
    assert (key[-5:] < 128).any()  # the values are written under the strip
