"""Round 31's all-cells variant of the photo-region score (docs/RESULTS.md): one k-means over
*all* cells of all photos, as the app's co-clustering runs it, scored by NMI with the kinds on
the labelled cells only (`mcssl eval concepts --data DIR` clusters the labelled cells alone).
DIR is what `scripts/fetch_photos.sh DIR --regions` writes. The first checkpoint also scores
the four baselines (random ViT, pixels, colour and texture statistics). Mean over k-means seeds
0-2 at k = 6 (the kinds) and k = 4 (the app's largest k).

    python docs/results/region_allcells.py RESOLUTION LAYER FACET DIR CHECKPOINT...
"""

import sys

import numpy as np

from mcssl.evaluation.concepts import UNLABELLED, featurisers, from_folder, truth_at
from mcssl.explore.concepts import cocluster
from mcssl.explore.encoder import load_encoder
from mcssl.metrics import nmi


def main() -> None:
    res, layer, facet, folder, *ckpts = sys.argv[1:]
    data = from_folder(folder)
    print(f"{len(data)} photos from {folder}, {res} px, block {layer}, {facet}; NMI k=6 / k=4")
    for i, ckpt in enumerate(ckpts):
        enc = load_encoder(ckpt)
        feats = featurisers(enc, int(res), int(layer), baselines=i == 0, seed=0, facet=facet)
        for name, run in feats.items():
            tokens, truths = [], []
            for (t, grid, _), item in zip(run([d.image for d in data]), data, strict=True):
                tokens.append(t)
                truths.append(truth_at(item.mask, grid, enc.patch_size).ravel())
            truth = np.concatenate(truths)
            keep = truth != UNLABELLED
            got = [
                np.mean([nmi(truth[keep], np.concatenate(cocluster(tokens, k, s))[keep])
                         for s in (0, 1, 2)])
                for k in (6, 4)
            ]  # fmt: skip
            print(f"{ckpt if name == 'checkpoint' else name:40s} {got[0]:.3f} / {got[1]:.3f}")


if __name__ == "__main__":
    main()
