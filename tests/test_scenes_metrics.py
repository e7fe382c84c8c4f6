"""Synthetic scenes (masks match what was drawn, determinism) and concept-discovery metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mcssl.metrics import ari, matched_miou, nmi, patch_labels
from mcssl.scenes import CLASSES, SceneSpec, make_scenes, spec_for


def test_masks_match_what_was_drawn() -> None:
    flat = SceneSpec(jitter=0.0, lighting=0.0)  # no jitter, no lighting: exact class shades
    for img, mask in make_scenes(6, seed=3, spec=flat):
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8 and mask.shape == (128, 128)
        present = set(np.unique(mask)) - {0}
        assert present and present <= set(range(1, len(CLASSES) + 1))
        for c in present:
            colour = np.asarray(CLASSES[c - 1][1], np.float32)
            shades = np.stack([colour * flat.dark, colour])  # the texture's two tones
            px = img[mask == c].astype(np.float32)
            dist = np.abs(px[:, None, :] - shades[None]).max(2)  # (pixels, 2)
            assert dist.min(1).max() <= 0.5 + 1e-3  # every pixel is one tone (up to rounding)
            assert set(dist.argmin(1)) == {0, 1}  # and both tones are there


def test_default_scenes_keep_each_class_nearest_its_colour() -> None:
    """With jitter and lighting on, an object's bright tone is still nearest its own class's
    colour (the classes stay recognisable), while the background varies from scene to scene."""
    colours = np.asarray([c[1] for c in CLASSES], np.float32)
    backgrounds = []
    for img, mask in make_scenes(8, seed=5):
        backgrounds.append(img[mask == 0].mean(0))
        for c in set(np.unique(mask)) - {0}:
            px = img[mask == c].astype(np.float32)
            bright = px[px.sum(1) >= np.median(px.sum(1))].mean(0)
            gains = bright / colours  # compare hue, not brightness (lighting changes it)
            spread = np.abs(np.log(gains / gains.mean(1, keepdims=True))).sum(1)
            assert spread.argmin() == c - 1
    assert np.std(backgrounds, axis=0).mean() > 10


def test_scenes_are_deterministic_by_seed() -> None:
    a, b, c = make_scenes(3, seed=1), make_scenes(3, seed=1), make_scenes(3, seed=2)
    assert all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert not np.array_equal(a[0][0], c[0][0])
    small = make_scenes(2, seed=1, spec=SceneSpec(size=64, max_objects=1))
    assert small[0][0].shape == (64, 64, 3) and len(set(np.unique(small[0][1])) - {0}) == 1


def test_patch_labels_take_the_majority() -> None:
    mask = np.zeros((4, 4), int)
    mask[0, :3] = 2  # top-left patch: 2 of 4 pixels are class 2 -> tie -> lower id (0)
    mask[0:2, 2:4] = 1  # top-right patch: all class 1
    mask[2:, :] = 3
    mask[3, 3] = 0
    assert patch_labels(mask, 2).tolist() == [[0, 1], [3, 3]]


def test_metrics_on_hand_made_label_maps() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    renamed = (truth + 1) % 3  # the same partition under other ids
    assert ari(truth, renamed) == pytest.approx(1.0)
    assert nmi(truth, renamed) == pytest.approx(1.0)
    assert matched_miou(truth, renamed) == pytest.approx(1.0)
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    # IoU by hand: class 0 vs cluster 0: 4/5; class 1 vs 1: 3/4; class 2 vs 2: 1
    assert matched_miou(truth, pred) == pytest.approx((4 / 5 + 3 / 4 + 1) / 3)
    assert ari(truth, pred) == pytest.approx(adjusted_rand_score(truth.ravel(), pred.ravel()))
    assert nmi(truth, pred) == pytest.approx(
        normalized_mutual_info_score(truth.ravel(), pred.ravel())
    )
    one = np.zeros_like(truth)  # a single cluster matches one class only
    assert matched_miou(truth, one) == pytest.approx((4 / 12) / 3)


def _object_colours(mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean chromaticity (RGB / sum) of every class's pixels per scene -> (n, 3), classes."""
    colours, classes = [], []
    for img, mask in make_scenes(60, seed=7, spec=spec_for(mode, 64)):
        for c in set(np.unique(mask)) - {0}:
            px = img[mask == c].astype(np.float64).mean(0)
            colours.append(px / px.sum())
            classes.append(c)
    return np.asarray(colours), np.asarray(classes)


def test_varied_mode_takes_the_class_out_of_the_colour() -> None:
    """Nearest class-mean colour (fit on the same objects, so an upper bound) names the class
    of almost every object in the fixed mode and not much above chance (0.2) in the varied."""
    acc = {}
    for mode in ("fixed", "varied"):
        x, y = _object_colours(mode)
        means = np.stack([x[y == c].mean(0) for c in range(1, len(CLASSES) + 1)])
        pred = np.abs(x[:, None] - means[None]).sum(2).argmin(1) + 1
        acc[mode] = float((pred == y).mean())
        # within-class colour spread relative to the spread of the class means
        within = np.mean([x[y == c].std(0).sum() for c in range(1, len(CLASSES) + 1)])
        acc[mode + "_ratio"] = within / means.std(0).sum()
    assert acc["fixed"] > 0.9 and acc["varied"] < 0.45
    assert acc["varied_ratio"] > 4 * acc["fixed_ratio"]


def test_varied_scenes_keep_the_masks_and_fixed_scenes_are_unchanged() -> None:
    fixed = make_scenes(3, seed=1, spec=spec_for("fixed"))
    plain = make_scenes(3, seed=1)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(fixed, plain, strict=True))
    varied = make_scenes(3, seed=1, spec=spec_for("varied"))
    assert not np.array_equal(varied[0][0], fixed[0][0])
    assert all(v[1].shape == (128, 128) and v[0].dtype == np.uint8 for v in varied)
    with pytest.raises(ValueError, match="one of"):
        spec_for("odd")
