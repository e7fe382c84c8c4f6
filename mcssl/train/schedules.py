"""Per-step schedules as precomputed arrays (one value for every step, the last one included)."""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Linear warm-up from ``warmup_start`` to ``start`` over ``warmup_steps`` steps, then a
    cosine from ``start`` (first step after warm-up) to exactly ``end`` (the last step)."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(warmup_start, start, warmup_steps, endpoint=False)
    n = total_steps - warmup_steps
    t = np.arange(n) / max(n - 1, 1)
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * t))
    if n == 1:
        cos = np.array([end])
    return np.concatenate([warm, cos])


def warmup_constant(start: float, end: float, total_steps: int, warmup_steps: int) -> np.ndarray:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (teacher temp)."""
    warmup_steps = min(warmup_steps, total_steps)
    warm = np.linspace(start, end, warmup_steps, endpoint=False)
    return np.concatenate([warm, np.full(total_steps - warmup_steps, end)])
