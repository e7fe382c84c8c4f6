"""Round 15's probe (docs/RESULTS.md): how much co-clustering NMI the benchmark's classes allow
a feature that knows only a token's local texture, and what hand-made texture statistics score.

Two classes share each texture (stripes: the red disc and the purple square; checker: the
triangle and the yellow disc; ``mcssl.scenes.CLASSES``), so in the ``varied`` mode, where colour
says nothing, a token can tell them apart only by the shape of the object it lies in. Prints

- ceilings: the NMI with the true classes of the true classes merged by texture (a perfect
  texture detector that sees no shape) and merged to object vs background (a perfect
  figure-ground detector), on the tokens of the 128 px read-out;
- ``cell_texture`` of each cell alone, over its 3 x 3 neighbourhood (the ``texture_stats``
  baseline of ``mcssl eval concepts``), and that with the cell's RGB mean and std added;

each scored like a method of ``mcssl eval concepts`` at the default's read-out (128 px, 8 px
cells).

    python docs/results/texture_probe.py [N_SCENES]   (default 200; seeds 0 1 2, both modes)
"""

import sys

import numpy as np
import torch

from mcssl.evaluation.concepts import (
    Feats,
    _patch_pixels,
    load_benchmark,
    score,
    truth_at,
)
from mcssl.images import cell_texture, neighbourhood_mean
from mcssl.metrics import nmi
from mcssl.scenes import CLASSES

PATCH, RESOLUTION = 8, 128  # the default's read-out: 16 x 16 tokens of 8 px
KINDS = ("cell", "3x3", "3x3 + colour")


def merged(by: str) -> np.ndarray:
    """class id -> group id: by texture, or object (1) vs background (0)."""
    if by == "figure":
        return np.array([0] + [1] * len(CLASSES))
    kinds = sorted({tex for _, _, tex in CLASSES})
    return np.array([0] + [1 + kinds.index(tex) for _, _, tex in CLASSES])


def featurise(images, kind: str) -> list[Feats]:
    out = []
    for im in images:
        t, grid = _patch_pixels(im, PATCH, RESOLUTION)
        f = cell_texture(t.reshape(-1, 3, PATCH, PATCH))
        f = f if kind == "cell" else neighbourhood_mean(f[None], grid)[0]
        if kind.endswith("colour"):
            f = torch.cat([f, t.mean(-1), t.std(-1, correction=0)], 1)
        out.append((f.numpy(), grid, None))
    return out


def main(n: int) -> None:
    for mode in ("fixed", "varied"):
        rows: dict[str, list[dict]] = {k: [] for k in KINDS}
        ceil: dict[str, list[float]] = {"texture": [], "figure": []}
        for seed in (0, 1, 2):
            data = load_benchmark(f"synthetic:{n}", seed, mode)
            grid = (RESOLUTION // PATCH,) * 2
            truth = np.concatenate([truth_at(d.mask, grid, PATCH).ravel() for d in data])
            for by, got in ceil.items():
                got.append(nmi(truth, merged(by)[truth]))
            for k, got in rows.items():
                got.append(score(featurise([d.image for d in data], k), data, PATCH, seed))
        t, f = np.mean(ceil["texture"]), np.mean(ceil["figure"])
        print(f"[{mode}] ceilings: texture only {t:.3f}, figure-ground only {f:.3f}")
        for k, r in rows.items():
            cells = " ".join(
                f"{m} {np.mean([x[m] for x in r]):.3f} ± {np.std([x[m] for x in r]):.3f}"
                for m in ("ari", "miou", "nmi", "image_share")
            )
            print(f"[{mode}] {k:<13} {cells}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
