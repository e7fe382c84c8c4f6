"""Probe (docs/RESULTS.md, round 5): are the concept head's probabilities good features for
co-clustering across images? Per-image ARI / mIoU and co-clustering NMI on the concept
benchmark for: the setting's features (``feats``); the square roots of the pseudo-concept
probabilities as the app computes them (``p``) and with 0.5 or all of the image's mean logit
subtracted first, as the teacher's targets under ``shortcut.image_centring`` (``p_c50``,
``p_c100``); and each of those beside the features, both L2-normalised (``+feats``; the
``keys+concepts`` facet is ``p+feats`` at a keys setting).

    python scripts/probe_concept_features.py CHECKPOINT RESOLUTION LAYER FACET
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from mcssl.evaluation import concepts as C
from mcssl.explore.concepts import _normalise
from mcssl.explore.encoder import Encoder, load_encoder
from mcssl.explore.features import FeatureExtractor, Settings


def centred_probs(enc: Encoder, last: np.ndarray, alpha: float) -> np.ndarray:
    """Pseudo-concept probabilities with ``alpha`` of the image's mean logit subtracted first
    (the teacher's targets under ``shortcut.image_centring``). last: (N, D) -> (N, K)."""
    with torch.inference_mode():
        z = enc.head(torch.from_numpy(last)).float()
        z = z - alpha * z.mean(0, keepdim=True)
        return torch.softmax((z - enc.center) / enc.teacher_temp, -1).numpy()


def variants(enc: Encoder, tokens: np.ndarray, probs: np.ndarray, last: np.ndarray) -> dict:
    out = {"feats": tokens}
    for name, p in (
        ("p", probs),
        ("p_c50", centred_probs(enc, last, 0.5)),
        ("p_c100", centred_probs(enc, last, 1.0)),
    ):
        root = np.sqrt(p.astype(np.float32))
        out[name] = root
        out[name + "+feats"] = np.concatenate([_normalise(tokens), _normalise(root)], 1)
    return out


def main() -> None:
    ckpt, res, layer, facet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    enc = load_encoder(ckpt)
    ex = FeatureExtractor(enc, Settings(resolution=res, max_side=4 * res, layer=layer, facet=facet))
    ex_last = FeatureExtractor(enc, Settings(resolution=res, max_side=4 * res))
    print("mode seed | variant ARI/mIoU/NMI ...")
    for mode in ("fixed", "varied"):
        for seed in (0, 1, 2):
            data = C.load_benchmark("synthetic:200", seed, mode)
            out = ex([d.image for d in data])
            lasts = ex_last([d.image for d in data])
            per = [
                variants(enc, f.tokens, f.probs, g.tokens) for f, g in zip(out, lasts, strict=True)
            ]
            row = []
            for name in per[0]:
                feats = [(v[name], f.grid, f.argmax) for v, f in zip(per, out, strict=True)]
                s = C.score(feats, data, enc.patch_size, seed)
                row.append(f"{name} {s['ari']:.3f}/{s['miou']:.3f}/{s['nmi']:.3f}")
            print(mode, seed, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
