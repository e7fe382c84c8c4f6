"""Probe (docs/RESULTS.md, round 5): pseudo-concepts at inference with per-concept biases
calibrated the way Sinkhorn-Knopp balances the teacher's targets in training (50 iterations
over every token of 400 other scenes, generator seed 7, both modes), after subtracting
ALPHA of each image's mean logit. Scored as scripts/probe_concept_features.py.

    python scripts/probe_concept_calibration.py CHECKPOINT RESOLUTION LAYER FACET [ALPHA]
"""

import sys

import numpy as np
import torch

from mcssl.evaluation import concepts as C
from mcssl.explore.concepts import _normalise
from mcssl.explore.encoder import load_encoder
from mcssl.explore.features import FeatureExtractor, Settings

ckpt, res, layer, facet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
alpha = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
enc = load_encoder(ckpt)
ex = FeatureExtractor(enc, Settings(resolution=res, max_side=4 * res, layer=layer, facet=facet))
ex_last = FeatureExtractor(enc, Settings(resolution=res, max_side=4 * res))
T = enc.teacher_temp


def logits(last):
    with torch.inference_mode():
        z = enc.head(torch.from_numpy(last)).float()
        return z - alpha * z.mean(0, keepdim=True)


cal = [
    f.tokens
    for m in ("fixed", "varied")
    for f in ex_last([d.image for d in C.load_benchmark("synthetic:200", 7, m)])
]
z = torch.cat([logits(t) for t in cal]) / T
bias = torch.zeros(z.shape[1])
for it in range(50):
    lq = z + bias
    lq = lq - lq.logsumexp(1, keepdim=True)  # rows sum to 1
    col = lq.logsumexp(0) - np.log(z.shape[0] / z.shape[1])  # log(col mass / target)
    bias -= col
    if it in (2, 49):
        mass = torch.softmax(z + bias, 1).sum(0)
        print(
            f"# iters {it + 1}: col mass max/min {mass.max():.1f}/{mass.min():.1f} "
            f"(target {z.shape[0] / z.shape[1]:.1f}), bias {bias.min():.1f}..{bias.max():.1f}"
        )
for mode in ("fixed", "varied"):
    for seed in (0, 1, 2):
        data = C.load_benchmark("synthetic:200", seed, mode)
        out = ex([d.image for d in data])
        lasts = ex_last([d.image for d in data])
        row = []
        for name in ("feats", "p_cal", "p_cal+feats"):
            feats = []
            for f, g in zip(out, lasts, strict=True):
                p = torch.softmax(logits(g.tokens) / T + bias, 1).numpy()
                r = np.sqrt(p)
                v = {
                    "feats": f.tokens,
                    "p_cal": r,
                    "p_cal+feats": np.concatenate([_normalise(f.tokens), _normalise(r)], 1),
                }[name]
                feats.append((v, f.grid, p.argmax(1)))
            s = C.score(feats, data, enc.patch_size, seed)
            row.append(
                f"{name} {s['ari']:.3f}/{s['miou']:.3f}/{s['nmi']:.3f} nmi_arg "
                f"{s['nmi_concepts']:.3f} img/c {s['images_per_concept']:.1f}"
            )
        print(mode, seed, " | ".join(row), flush=True)
