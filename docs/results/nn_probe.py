"""Round 8's probe (docs/RESULTS.md): for each token of the benchmark's scenes, its nearest
token (cosine) in *another* scene, as ``shortcut.cross_image`` picks its targets. Reports
how often the two share a ground-truth class (all tokens; object tokens only) and how alike
the two scenes are: mean-RGB distance of the scene pairs it picks / of all scene pairs
(1 = no preference for look-alike scenes).

    python docs/results/nn_probe.py [--centred] MODE CHECKPOINT...   (64 px, block -1, output
    tokens; the first checkpoint also scores the random-ViT and colour-statistics baselines;
    --centred subtracts each scene's mean token first, as ``shortcut.cross_image_centred``)
"""

import sys

import numpy as np

from mcssl.evaluation.concepts import (
    Feats,
    Labelled,
    colour_features,
    encoder_features,
    load_benchmark,
    random_like,
    truth_at,
)
from mcssl.explore.encoder import load_encoder


def probe(feats: list[Feats], data: list[Labelled], patch: int, centred: bool) -> dict[str, float]:
    toks, cls, img, rgb = [], [], [], []
    for i, ((t, grid, _), item) in enumerate(zip(feats, data, strict=True)):
        t = t - t.mean(0, keepdims=True) if centred else t
        toks.append(t / np.linalg.norm(t, axis=1, keepdims=True).clip(1e-8))
        cls.append(truth_at(item.mask, grid, patch).ravel())
        img.append(np.full(len(t), i))
        pixels = np.asarray(item.image.convert("RGB"), dtype=np.float64) / 255
        rgb.append(pixels.reshape(-1, 3).mean(0))
    f, c, im, mean = np.concatenate(toks), np.concatenate(cls), np.concatenate(img), np.stack(rgb)
    sim = f @ f.T
    sim[im[:, None] == im[None, :]] = -np.inf  # another scene only
    nn = sim.argmax(1)
    obj = c != 0  # class 0 is the background
    freq, freq_obj = np.bincount(c) / len(c), np.bincount(c[obj]) / obj.sum()
    pair = np.linalg.norm(mean[:, None] - mean[None], axis=-1)
    n = len(mean)
    return {
        "same_class": float((c[nn] == c).mean()),
        "chance": float((freq**2).sum()),
        "same_class_objects": float((c[nn][obj] == c[obj]).mean()),
        "chance_objects": float((freq_obj**2).sum()),
        "rgb_distance_ratio": float(pair[im, im[nn]].mean() / (pair.sum() / (n * (n - 1)))),
    }


def main(mode: str, specs: list[str], centred: bool) -> None:
    data = load_benchmark("synthetic:100", 0, mode)
    images = [d.image for d in data]
    for j, spec in enumerate(specs):
        enc = load_encoder(spec)
        runs = [(spec.rstrip("/").split("/")[-1], encoder_features(enc, 64, -1, "tokens"))]
        if j == 0:
            runs += [
                ("random_vit", encoder_features(random_like(enc, 0), 64, -1, "tokens")),
                ("colour_stats", colour_features(enc.patch_size, 64)),
            ]
        for name, featurise in runs:
            r = probe(featurise(images), data, enc.patch_size, centred)
            print(f"{mode} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    centred = bool(args) and args[0] == "--centred"
    if len(args) < centred + 2:
        sys.exit("usage: python docs/results/nn_probe.py [--centred] MODE CHECKPOINT...")
    main(args[centred], args[centred + 1 :], centred)
