"""The settings a checkpoint's concepts are best at: a small grid of resolution x layer x facet
scored on the concept benchmark (``mcssl eval defaults``), the winner stored in the export.

Score of a setting = the mean over scene modes of (per-image ARI + co-clustering NMI) / 2, both
as ``mcssl eval concepts`` measures them (mean over seeds): one number that rewards separating
the concepts of each image and a vocabulary that holds across images. Each image is encoded
once per resolution; every layer and facet of the grid comes out of that one forward pass.
Whether a setting's gap to the best is noise: on scenes each seed draws new scenes, so the gap's
spread over seeds says; on a folder every seed scores the same images, so each image is left out
once (the jackknife; groups of images past 20) to see how much the gap depends on which images
the folder holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from scipy import stats

from mcssl.evaluation.concepts import Feats, jackknife_se, left_out, load_benchmark, score
from mcssl.explore.encoder import Encoder
from mcssl.explore.features import block_features, check_facet, facets_of, model_size, to_tensor

SCORE = "mean over modes of (per-image ARI + co-clustering NMI) / 2"


def grid_layers(depth: int) -> list[int]:
    """The second half of the blocks (at least the last 4), counted from the end (-1 = last):
    all of a shallow model. Bundled ViT-Tinys were best at blocks -1 to -6 of 12 (RESULTS.md)."""
    return list(range(-1, -min(depth, max(4, depth // 2)) - 1, -1))


def grid_resolutions(enc: Encoder) -> list[int]:
    """The model's training size and twice that (224 and 448 when it does not say)."""
    size = int(enc.info.get("img_size") or 224)
    return [size, 2 * size]


def grid_features(
    enc: Encoder,
    images: list[Image.Image],
    resolution: int,
    views: list[tuple[int, str]],
    batch_size: int = 16,
) -> dict[tuple[int, str], list[Feats]]:
    """Every view's (layer counted from the end, facet) features of every image, fp32, from one
    forward pass per batch. -> {view: [(tokens (N, C), grid, argmax (N,) or None)] per image}."""
    p, depth = enc.patch_size, enc.depth
    wanted = [(layer % depth, facet) for layer, facet in views]
    out: dict[tuple[int, str], list[Feats | None]] = {v: [None] * len(images) for v in views}
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        by_size.setdefault(model_size(*im.size, p, resolution, 4 * resolution), []).append(i)
    for size, idx in by_size.items():
        grid = (size[1] // p, size[0] // p)
        for j in range(0, len(idx), batch_size):
            chunk = idx[j : j + batch_size]
            x = torch.stack([to_tensor(images[i], size) for i in chunk]).to(enc.device)
            feats, probs = block_features(enc, x, wanted)
            argmax = None if probs is None else probs.argmax(-1).cpu().numpy()
            for view, w in zip(views, wanted, strict=True):
                t = feats[w].float().cpu().numpy()
                for b, i in enumerate(chunk):
                    out[view][i] = (t[b], grid, None if argmax is None else argmax[b])
    return out  # type: ignore[return-value]  # every slot was filled


def search(
    enc: Encoder,
    data_spec: str,
    seeds: list[int],
    modes: list[str] | tuple[str, ...] = ("fixed", "varied"),
    resolutions: list[int] | None = None,
    layers: list[int] | None = None,
    facets: list[str] | tuple[str, ...] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Scores every (resolution, layer, facet) of the grid on ``data_spec`` for each seed and
    mode (a folder: once). -> {"rows": [{resolution, layer, facet, score, seed_scores, gap,
    gap_se, within_noise (``against_best``), by_mode: {mode: {ari, nmi, miou: mean over
    seeds}}}] best first, "best": rows[0], ...}."""
    resolutions = resolutions or grid_resolutions(enc)
    facets = [check_facet(f, enc) for f in facets] if facets else facets_of(enc)
    layers = layers or grid_layers(enc.depth)
    bad = [la for la in layers if not -enc.depth <= la < enc.depth]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has -{enc.depth}..{enc.depth - 1}")
    views = [(la, f) for la in layers for f in facets]
    if not data_spec.startswith("synthetic:"):
        modes = ("folder",)
    scores: dict[tuple[int, int, str], dict[str, list[dict]]] = {}
    for mode in modes:
        for s in seeds:
            data = load_benchmark(data_spec, s, "fixed" if mode == "folder" else mode)
            for res in resolutions:
                t0 = time.perf_counter()
                feats = grid_features(enc, [d.image for d in data], res, views)
                for view in views:
                    got = score(feats[view], data, enc.patch_size, s)
                    if mode == "folder":  # which images the folder holds: up to 20 scorings
                        loo = left_out(feats[view], data, enc.patch_size, s)
                        got["left_out"] = (
                            None if loo is None else [(x["ari"] + x["nmi"]) / 2 for x in loo]
                        )
                    scores.setdefault((res, *view), {}).setdefault(mode, []).append(got)
                log(f"{mode} seed {s} {res} px: {len(views)} settings in "
                    f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    rows = [_row(key, by_mode) for key, by_mode in scores.items()]
    rows.sort(key=lambda r: -r["score"])
    against_best(rows)
    return {"data": data_spec, "seeds": seeds, "modes": list(modes), "score": SCORE,
            "rows": rows, "best": rows[0]}  # fmt: skip


def _row(key: tuple[int, int, str], by_mode: dict[str, list[dict]]) -> dict:
    res, layer, facet = key
    means = {
        mode: {m: float(np.mean([r[m] for r in runs])) for m in ("ari", "nmi", "miou")}
        for mode, runs in by_mode.items()
    }
    per_seed = np.mean([[(r["ari"] + r["nmi"]) / 2 for r in runs] for runs in by_mode.values()], 0)
    row = {"resolution": res, "layer": layer, "facet": facet, "score": float(per_seed.mean()),
           "seed_scores": per_seed.tolist(), "by_mode": means}  # fmt: skip
    runs = by_mode.get("folder", [])
    if runs and all(r["left_out"] is not None for r in runs):  # per image, mean over seeds
        row["left_out"] = np.mean([r["left_out"] for r in runs], 0).tolist()
    return row


def against_best(rows: list[dict]) -> None:
    """Adds each row's paired gap to the best row (``rows[0]``): ``gap`` (mean over seeds),
    ``gap_se`` (its standard error; None from one seed of scenes) and ``within_noise``: the gap
    lies inside the two-sided 95 % paired t interval. Scenes: over the evaluation seeds (the
    same scenes score both rows, so a seed's own difficulty cancels); with three seeds that
    interval is wide (4.3 standard errors) on purpose: the model bundled in rounds 24-27 read
    0.006 ± 0.002 better at 128 px than at 96 px over seeds 0-2 and 0.009 worse on seeds 3-5
    (docs/RESULTS.md, round 27). A folder (rows with ``left_out``, mean over seeds): the
    jackknife over its images, since its seeds only restart k-means (RESULTS.md, round 32); the
    mean over seeds keeps k-means' own noise out of it (one seed, 13 photos: 34 of 35 settings
    within noise of the best; three seeds: 32)."""
    best = rows[0]
    for r in rows:
        gap = best["score"] - r["score"]
        if "left_out" in best and "left_out" in r:
            d = np.asarray(best["left_out"]) - np.asarray(r["left_out"])
            se: float | None = jackknife_se(d)
        else:
            d = np.asarray(best["seed_scores"]) - np.asarray(r["seed_scores"])
            se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None
        within = None if se is None else bool(gap <= stats.t.ppf(0.975, d.size - 1) * se)
        r |= {"gap": float(gap), "gap_se": se, "within_noise": within}


def format_grid(result: dict) -> str:
    """The whole grid, best first: per mode ARI / mIoU / co-clustering NMI, the score and its gap
    to the best; then the settings within noise of the best."""
    modes = result["modes"]
    head = ["res", "layer", "facet"]
    head += [f"{m} {h}" for m in modes for h in ("ARI", "mIoU", "NMI")] + ["score", "vs best"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for r in result["rows"]:
        cells = [str(r["resolution"]), str(r["layer"]), r["facet"]]
        cells += [f"{r['by_mode'][m][k]:.3f}" for m in modes for k in ("ari", "miou", "nmi")]
        best = f"**{r['score']:.3f}**" if r is result["best"] else f"{r['score']:.3f}"
        gap = "" if r["gap_se"] is None else f" ± {r['gap_se']:.3f}"
        lines.append("| " + " | ".join([*cells, best, f"{0.0 - r['gap']:.3f}{gap}"]) + " |")
    n = len(result["seeds"])
    lines.append(f"score = {result['score']}; {result['data']} x {n} seed(s); best first")
    if result["best"]["gap_se"] is not None:
        over = "images left out in turn" if "left_out" in result["best"] else "seeds"
        ties = [_name(r) for r in result["rows"][1:] if r["within_noise"]]
        lines.append(f"within noise of the best (paired gap over the {over} inside the 95 % t "
                     f"interval): {len(ties)} of {len(result['rows']) - 1}: "
                     + (", ".join(ties) or "none"))  # fmt: skip
    return "\n".join(lines)


def _name(row: dict) -> str:
    return f"{row['resolution']} / {row['layer']} / {row['facet']}"
