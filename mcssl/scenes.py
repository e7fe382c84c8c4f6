"""Procedural multi-concept scenes with ground-truth masks (for concept-discovery benchmarks).

A fixed set of concept classes is shared by every scene: each class is a shape with its own
colour and a high-contrast two-tone texture; objects of random size and position are drawn over
a textured background of random colours (class 0), later objects occluding earlier ones.
Per-object colour jitter and a lighting gradient over the whole image make raw colour a weaker
cue than texture and shape, so that pixel k-means is a real baseline. Deterministic by seed.

Two modes (``SceneSpec.mode``): ``fixed`` (above: each class keeps its colour) and ``varied``
(every object gets a random colour, so the class is carried by shape and texture only, and
each image gets its own colour cast and lighting strength): colour statistics cannot give the
class away there, which is what a concept that holds across images must survive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (shape, RGB colour, texture): class c = CLASSES[c - 1]; class 0 is the background
CLASSES = (
    ("disc", (220, 60, 50), "stripes"),
    ("square", (40, 90, 210), "dots"),
    ("triangle", (60, 170, 70), "checker"),
    ("disc", (240, 200, 40), "checker"),
    ("square", (150, 60, 180), "stripes"),
)


@dataclass(frozen=True)
class SceneSpec:
    size: int = 128
    min_objects: int = 1
    max_objects: int = 4
    min_frac: float = 0.2  # object size as a fraction of the image side
    max_frac: float = 0.5
    jitter: float = 0.15  # per-object colour gain in [1 - jitter, 1 + jitter] per channel
    lighting: float = 0.3  # brightness varies linearly by +-lighting across the image
    dark: float = 0.35  # the texture's second tone = class colour x dark
    mode: str = "fixed"  # fixed: a class keeps its colour | varied: see the module docstring
    cast: float = 0.3  # varied only: per-image colour gain in [1 - cast, 1 + cast] per channel


MODES = ("fixed", "varied")


def spec_for(mode: str, size: int = 128) -> SceneSpec:
    """The benchmark's scenes of one mode at ``size`` px."""
    if mode not in MODES:
        raise ValueError(f"scene mode must be one of {MODES}, got {mode!r}")
    return SceneSpec(size=size, mode=mode)


def _texture(kind: str, h: int, w: int, period: int, phase: int) -> np.ndarray:
    """(h, w) pattern in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w]
    if kind == "stripes":
        return (((x + y + phase) // period) % 2).astype(np.float32)
    if kind == "dots":
        return (((x + phase) % period < period // 2) & ((y + phase) % period < period // 2)).astype(
            np.float32
        )
    return ((((x + phase) // period) + (y // period)) % 2).astype(np.float32)  # checker


def _shape(kind: str, h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    """(h, w) bool mask of a shape centred at (cy, cx) with radius/half-side r."""
    y, x = np.mgrid[0:h, 0:w]
    if kind == "disc":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r**2
    if kind == "square":
        return (np.abs(y - cy) <= r) & (np.abs(x - cx) <= r)
    # upward triangle inside the square of half-side r
    top, bottom = cy - r, cy + r
    half = (y - top) / (2 * r) * r  # half-width grows from 0 at the top to r at the bottom
    return (y >= top) & (y <= bottom) & (np.abs(x - cx) <= half)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """(s, s, 3) float: two random tones in a random texture, plus noise."""
    a, b = rng.uniform(60, 200, size=(2, 3))
    kind = ("stripes", "dots", "checker")[int(rng.integers(0, 3))]
    pattern = _texture(kind, s, s, int(rng.integers(4, 12)), int(rng.integers(0, 8)))[..., None]
    mix = 0.3 * pattern  # low contrast: background texture is a weaker cue than objects'
    return (1 - mix) * a + mix * b + rng.normal(0, 12, size=(s, s, 1))


def _lighting(rng: np.random.Generator, s: int, amount: float) -> np.ndarray:
    """(s, s, 1) gain: a linear ramp in a random direction, 1 +- amount."""
    theta = rng.uniform(0, 2 * np.pi)
    y, x = (np.mgrid[0:s, 0:s] / max(1, s - 1)) * 2 - 1
    ramp = (np.cos(theta) * x + np.sin(theta) * y) / np.sqrt(2)
    return (1 + amount * ramp)[..., None]


def make_scene(
    rng: np.random.Generator, spec: SceneSpec = SceneSpec()
) -> tuple[np.ndarray, np.ndarray]:
    """-> image (S, S, 3) uint8, mask (S, S) int64 with class ids (0 = background)."""
    s = spec.size
    img = _background(rng, s)
    mask = np.zeros((s, s), np.int64)
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        c = int(rng.integers(1, len(CLASSES) + 1))
        kind, colour, tex = CLASSES[c - 1]
        r = rng.uniform(spec.min_frac, spec.max_frac) * s / 2
        cy, cx = rng.uniform(r, s - r, size=2)
        region = _shape(kind, s, s, cy, cx, r)
        pattern = _texture(tex, s, s, max(2, s // 10), int(rng.integers(0, 8)))[..., None]
        gain = rng.uniform(1 - spec.jitter, 1 + spec.jitter, size=3)
        if spec.mode == "varied":  # any colour: the class is only shape and texture
            colour = tuple(rng.uniform(40, 240, size=3))
        light = np.asarray(colour, np.float32) * gain
        shade = light * (spec.dark + (1 - spec.dark) * pattern)
        img[region] = shade[region]
        mask[region] = c
    if spec.mode == "varied":  # a colour cast and a lighting strength of the image's own
        img = img * rng.uniform(1 - spec.cast, 1 + spec.cast, size=3)
        img = img * _lighting(rng, s, rng.uniform(0, 2 * spec.lighting))
    else:
        img = img * _lighting(rng, s, spec.lighting)
    return np.clip(img, 0, 255).round().astype(np.uint8), mask


def make_scenes(n: int, seed: int = 0, spec: SceneSpec = SceneSpec()):
    """n scenes from one seed: the same (seed, n, spec) always gives the same scenes."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, spec) for _ in range(n)]
