"""Procedural multi-concept scenes with ground-truth masks (for concept-discovery benchmarks).

A fixed set of concept classes is shared by every scene: each class is a shape with its own
colour and texture; objects of random size and position are drawn over a textured background
(class 0), later objects occluding earlier ones. Deterministic by seed.
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


def make_scene(
    rng: np.random.Generator, spec: SceneSpec = SceneSpec()
) -> tuple[np.ndarray, np.ndarray]:
    """-> image (S, S, 3) uint8, mask (S, S) int64 with class ids (0 = background)."""
    s = spec.size
    tone = rng.uniform(90, 170, size=3)
    noise = rng.normal(0, 18, size=(s, s, 1))
    grain = _texture("stripes", s, s, int(rng.integers(3, 6)), int(rng.integers(0, 8)))
    img = np.clip(tone + noise + 12 * grain[..., None], 0, 255)
    mask = np.zeros((s, s), np.int64)
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        c = int(rng.integers(1, len(CLASSES) + 1))
        kind, colour, tex = CLASSES[c - 1]
        r = rng.uniform(spec.min_frac, spec.max_frac) * s / 2
        cy, cx = rng.uniform(r, s - r, size=2)
        region = _shape(kind, s, s, cy, cx, r)
        pattern = _texture(tex, s, s, max(2, s // 16), int(rng.integers(0, 8)))
        shade = np.asarray(colour, np.float32) * (0.75 + 0.25 * pattern[..., None])
        img[region] = shade[region]
        mask[region] = c
    return img.round().astype(np.uint8), mask


def make_scenes(n: int, seed: int = 0, spec: SceneSpec = SceneSpec()):
    """n scenes from one seed: the same (seed, n, spec) always gives the same scenes."""
    rng = np.random.default_rng(seed)
    return [make_scene(rng, spec) for _ in range(n)]
