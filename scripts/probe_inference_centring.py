"""Probe (docs/RESULTS.md, round 4): does subtracting each image's mean token at inference
make co-clustering follow classes across images? Co-clustering NMI of the checkpoint and the
three baselines on the concept benchmark, for raw features, features minus their image's mean,
and L2-normalised features minus their image's mean (k-means normalises again after).

    python scripts/probe_inference_centring.py CHECKPOINT RESOLUTION LAYER FACET
"""

from __future__ import annotations

import sys

import numpy as np

from mcssl.evaluation import concepts as C
from mcssl.explore.concepts import _normalise, cocluster
from mcssl.explore.encoder import load_encoder
from mcssl.metrics import nmi


def variants(t: np.ndarray) -> list[np.ndarray]:
    t = t.astype(np.float32)
    n = _normalise(t)
    return [t, t - t.mean(0, keepdims=True), n - n.mean(0, keepdims=True)]


def main() -> None:
    ckpt, res, layer, facet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    enc = load_encoder(ckpt)
    print("mode seed | method raw/centred/normalised+centred ...")
    for mode in ("fixed", "varied"):
        for seed in (0, 1, 2):
            data = C.load_benchmark("synthetic:200", seed, mode)
            row = []
            for name, featurise in C.featurisers(enc, res, layer, True, seed, facet).items():
                feats = featurise([d.image for d in data])
                truths = [
                    C.truth_at(d.mask, grid, enc.patch_size).ravel()
                    for (_, grid, _), d in zip(feats, data, strict=True)
                ]
                truth = np.concatenate(truths)
                k = len(np.unique(truth))
                per = list(zip(*(variants(t) for t, _, _ in feats), strict=True))
                scores = [nmi(truth, np.concatenate(cocluster(list(v), k, seed))) for v in per]
                row.append(f"{name} " + "/".join(f"{s:.3f}" for s in scores))
            print(mode, seed, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
