"""Round 32: is the default's gap to the baselines on the photo regions more than the photos
drawn? Per photo: its per-image ARI (mean over k-means seeds 0-2) for the checkpoint and each
baseline; then per baseline: the photos the checkpoint wins, the mean ARI difference with the
interval holding 90 % of bootstrap resamples of the photos, and the co-clustering NMI difference
(as `mcssl eval concepts --data DIR` scores it: labelled cells only) with a 90 % interval from
the jackknife over the photos (each left out once). DIR is what `scripts/fetch_photos.sh DIR
--regions` (and `--regions-more`) writes. Checkpoints named after --against join the baselines
(read the same way), so two runs can be paired over the same photos (round 34).

    python docs/results/region_paired.py RESOLUTION LAYER FACET DIR CHECKPOINT [RESAMPLES]
        [--against CHECKPOINT...]
"""

import sys
from pathlib import Path

import numpy as np

from mcssl.evaluation.concepts import (
    UNLABELLED,
    featurisers,
    from_folder,
    jackknife_se,
    left_out,
    score,
    truth_at,
)
from mcssl.explore.concepts import kmeans_labels
from mcssl.explore.encoder import load_encoder
from mcssl.metrics import ari

SEEDS = (0, 1, 2)


def labelled(feats, data, patch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """-> per photo (tokens, kinds) of its labelled cells."""
    out = []
    for (t, grid, _), item in zip(feats, data, strict=True):
        truth = truth_at(item.mask, grid, patch).ravel()
        keep = truth != UNLABELLED
        out.append((t[keep], truth[keep]))
    return out


def per_photo_ari(cells: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """-> (photos,) mean ARI over SEEDS; NaN where a photo has one kind only."""
    out = []
    for t, truth in cells:
        k = len(np.unique(truth))
        out.append(
            np.nan if k < 2 else np.mean([ari(truth, kmeans_labels(t, k, s)) for s in SEEDS])
        )
    return np.array(out)


def nmi_all_then_left_out(feats, data, patch: int) -> np.ndarray:
    """-> (1 + photos,) co-clustering NMI of all photos, then with each left out (the package's
    jackknife), each a mean over SEEDS."""
    rows = [
        [score(feats, data, patch, s)["nmi"]] + [r["nmi"] for r in left_out(feats, data, patch, s)]
        for s in SEEDS
    ]
    return np.mean(rows, 0)


def main() -> None:
    args, others = sys.argv[1:], []
    if "--against" in args:
        args, others = args[: args.index("--against")], args[args.index("--against") + 1 :]
    res, layer, facet, folder, ckpt, *rest = args
    resamples = int(rest[0]) if rest else 200
    data = from_folder(folder)
    enc = load_encoder(ckpt)
    runs = featurisers(enc, int(res), int(layer), baselines=True, seed=0, facet=facet)
    for other in others:  # named by the run folder or file, without its extension
        run = featurisers(load_encoder(other), int(res), int(layer), False, 0, facet)
        runs[Path(other).stem] = run["checkpoint"]
    feats = {name: run([d.image for d in data]) for name, run in runs.items()}
    aris = {name: per_photo_ari(labelled(f, data, enc.patch_size)) for name, f in feats.items()}
    names = [d.name for d in data]
    print(f"{len(data)} photos from {folder}, {res} px, block {layer}, {facet}: {ckpt}")
    print(f"{'photo':24s}" + "".join(f"{n:>14s}" for n in aris))
    for i, name in enumerate(names):
        print(f"{name:24s}" + "".join(f"{a[i]:14.3f}" for a in aris.values()))
    mine, two = aris["checkpoint"], ~np.isnan(aris["checkpoint"])  # photos with >= 2 kinds
    # co-clustering NMI is not a mean over photos, and a resample that repeats a photo biases
    # it (a bootstrap interval of the gap could miss the gap itself), so leave one photo out
    co = {n: nmi_all_then_left_out(f, data, enc.patch_size) for n, f in feats.items()}
    rng = np.random.default_rng(0)
    print(f"\nARI: {resamples} bootstrap resamples of the photos; NMI: jackknife over the photos")
    print("checkpoint against       wins   ARI diff [90 % interval]     NMI diff [90 % interval]")
    for name in list(feats)[1:]:
        d = mine[two] - aris[name][two]
        boot = [np.mean(d[rng.integers(0, len(d), len(d))]) for _ in range(resamples)]
        a_lo, a_hi = np.percentile(boot, [5, 95])
        gap = co["checkpoint"] - co[name]  # [all photos, then each left out]
        se = jackknife_se(gap[1:])
        print(
            f"{name:22s} {int(np.sum(d > 0)):3d}/{len(d):<3d} {d.mean():+.3f} [{a_lo:+.3f}, "
            f"{a_hi:+.3f}]   {gap[0]:+.3f} [{gap[0] - 1.645 * se:+.3f}, {gap[0] + 1.645 * se:+.3f}]"
        )


if __name__ == "__main__":
    main()
