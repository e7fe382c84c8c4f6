"""Round 25's photo probe (docs/RESULTS.md): the image-identity share of token variance
(`image_share`, as `mcssl eval concepts` reports it on the scenes) on a set of real photos,
which have no ground truth. The first checkpoint also scores the four baselines (random ViT,
pixels, colour and texture statistics); lower = tokens tied less to their own photo.

    python docs/results/photo_share.py RESOLUTION LAYER FACET PHOTO_DIR CHECKPOINT...
"""

import sys

from mcssl.evaluation.concepts import featurisers, image_share
from mcssl.explore.encoder import load_encoder
from mcssl.images import find_images, load_rgb


def main() -> None:
    res, layer, facet, folder, *ckpts = sys.argv[1:]
    images = [load_rgb(p) for p in find_images(folder)]
    print(f"{len(images)} photos from {folder}, {res} px, block {layer}, {facet}")
    for i, ckpt in enumerate(ckpts):
        enc = load_encoder(ckpt)
        feats = featurisers(enc, int(res), int(layer), baselines=i == 0, seed=0, facet=facet)
        for name, run in feats.items():
            share = image_share([tokens for tokens, _, _ in run(images)])
            print(f"{ckpt if name == 'checkpoint' else name:40s} {share:.3f}")


if __name__ == "__main__":
    main()
