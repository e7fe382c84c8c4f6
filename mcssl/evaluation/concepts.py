"""Concept discovery with ground truth: per-image k-means vs. the true concept masks.

Per image, k-means with k = number of ground-truth concepts present (patch level), scored by
ARI and Hungarian-matched mIoU; across images, one co-clustering with k = number of classes,
scored by NMI against the classes. The same images and k-means go through every method, so
the baselines (raw pixel patches, a randomly initialised ViT of the same architecture) are
directly comparable with the checkpoint.

Beside those, three measures of the per-image shortcut (a vocabulary of each image's own
instead of concepts that hold across images): the share of token variance explained by image
identity, the NMI of the argmax pseudo-concepts with the image id, and the median number of
images a pseudo-concept occurs in. A colour-statistics baseline (each patch cell's mean and std
of RGB) and a scene mode where colour does not give the class away (``mcssl.scenes``) show
whether a method does better than colour; a colour-blind texture-statistics baseline (grey-level
spectrum and gradient orientations over each cell's 3 x 3 neighbourhood) whether it does better
than hand-made texture features.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mcssl.explore.concepts import K_MAX, _normalise, cocluster, kmeans_labels
from mcssl.explore.encoder import HEAD_FACETS, Encoder
from mcssl.explore.features import FeatureExtractor, Settings, model_size, to_tensor
from mcssl.images import IMAGE_EXTENSIONS, ImageError, load_rgb, texture_map
from mcssl.metrics import ari, matched_miou, nmi, patch_labels
from mcssl.scenes import MODES, make_scenes, spec_for

# features for a list of images: per image tokens (N, D), grid (h, w) and the argmax
# pseudo-concept per token (N,) when the method has a patch-concept head, else None
Feats = tuple[np.ndarray, tuple[int, int], np.ndarray | None]
Featuriser = Callable[[list[Image.Image]], list[Feats]]


UNLABELLED = 255  # mask value of pixels outside every labelled region (as Pascal VOC's void)


class BenchmarkError(ValueError):
    """Benchmark data that cannot be used; one-line message."""


@dataclass
class Labelled:
    image: Image.Image
    mask: np.ndarray  # (H, W) int class ids, same size as the image
    name: str


def synthetic(n: int, seed: int, size: int = 128, mode: str = "fixed") -> list[Labelled]:
    scenes = make_scenes(n, seed, spec_for(mode, size))
    return [
        Labelled(Image.fromarray(img), mask, f"scene{mode}{seed}_{i:04d}")
        for i, (img, mask) in enumerate(scenes)
    ]


def from_folder(root: str | Path) -> list[Labelled]:
    """``root/images/<name>.<ext>`` with ``root/masks/<name>.png`` holding class ids
    (``UNLABELLED`` where a pixel belongs to no labelled region)."""
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "masks").is_dir():
        raise BenchmarkError(f"{root}: expected images/ and masks/ folders")
    out = []
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        mpath = root / "masks" / f"{path.stem}.png"
        if not mpath.exists():
            raise BenchmarkError(f"{path}: no mask {mpath}")
        try:
            img = load_rgb(path)
            mask = np.asarray(Image.open(mpath))
        except (ImageError, OSError) as e:
            raise BenchmarkError(f"{mpath}: cannot read ({e})") from None
        if mask.ndim != 2 or mask.shape != (img.height, img.width):
            raise BenchmarkError(
                f"{mpath}: mask must be one channel of class ids, {img.height}x{img.width}"
            )
        out.append(Labelled(img, mask.astype(np.int64), path.stem))
    if not out:
        raise BenchmarkError(f"{root}/images: no images")
    classes = np.unique(np.concatenate([np.unique(item.mask) for item in out]))
    if (n := len(classes[classes != UNLABELLED])) > K_MAX:  # one co-clustering cluster a class
        raise BenchmarkError(f"{root}/masks: {n} classes; co-clustering takes at most {K_MAX}")
    return out


def load_benchmark(spec: str, seed: int = 0, mode: str = "fixed") -> list[Labelled]:
    """``synthetic:N`` (N generated scenes of ``mode`` from ``seed``) or a folder with images/
    and masks/ (``mode`` does not apply)."""
    if spec.startswith("synthetic:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise BenchmarkError(f"{spec}: expected synthetic:N with an integer N") from None
        if n < 1:
            raise BenchmarkError(f"{spec}: N must be at least 1")
        if mode not in MODES:
            raise BenchmarkError(f"scene mode must be one of {MODES}, got {mode!r}")
        return synthetic(n, seed, mode=mode)
    return from_folder(spec)


# ------------------------------------------------------------------------------ featurisers


def encoder_features(
    enc: Encoder, resolution: int, layer: int = -1, facet: str = "tokens"
) -> Featuriser:
    ex = FeatureExtractor(
        enc, Settings(resolution=resolution, max_side=4 * resolution, layer=layer, facet=facet)
    )
    return lambda images: [(f.tokens, f.grid, f.argmax) for f in ex(images)]


def random_like(enc: Encoder, seed: int = 0) -> Encoder:
    """The same architecture with timm's initialisation (no concept head): the random-ViT
    baseline."""
    backbone = copy.deepcopy(enc.backbone)
    torch.manual_seed(seed)
    for m in backbone.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    # a backbone built to be loaded (weight_init="skip") remembers "reset" as its mode, which
    # would leave PyTorch's default init; "" is timm's (truncated normal, std 0.02)
    backbone.weight_init_mode = ""
    backbone.init_weights()
    return Encoder(backbone, None, None, enc.teacher_temp, {"format": "random"}, "random")


def _patch_pixels(im: Image.Image, patch: int, resolution: int) -> tuple[torch.Tensor, tuple]:
    """The model input's normalised pixels per patch cell -> (h * w, 3, patch * patch), (h, w)."""
    size = model_size(*im.size, patch, resolution, 4 * resolution)
    x = to_tensor(im, size)  # (3, H, W)
    h, w = size[1] // patch, size[0] // patch
    t = x.reshape(3, h, patch, w, patch).permute(1, 3, 0, 2, 4).reshape(h * w, 3, -1)
    return t, (h, w)


def pixel_features(patch: int, resolution: int) -> Featuriser:
    """Raw normalised pixels of each patch, flattened: (N, 3 * patch * patch)."""

    def run(images: list[Image.Image]) -> list[Feats]:
        out = []
        for im in images:
            t, grid = _patch_pixels(im, patch, resolution)
            out.append((t.reshape(t.shape[0], -1).numpy(), grid, None))
        return out

    return run


def colour_features(patch: int, resolution: int) -> Featuriser:
    """Colour statistics of each patch cell, what a sceptical user tries first: mean and std
    of each RGB channel -> (N, 6)."""

    def run(images: list[Image.Image]) -> list[Feats]:
        out = []
        for im in images:
            t, grid = _patch_pixels(im, patch, resolution)
            stats = torch.cat([t.mean(-1), t.std(-1, correction=0)], dim=1)
            out.append((stats.numpy(), grid, None))
        return out

    return run


def texture_features(patch: int, resolution: int) -> Featuriser:
    """What a sceptical user tries when colour fails: ``mcssl.images.texture_map``, each patch
    cell's grey-level texture statistics averaged over its 3 x 3 neighbourhood (a texture needs
    a window of a period or two)."""

    def run(images: list[Image.Image]) -> list[Feats]:
        out = []
        for im in images:
            size = model_size(*im.size, patch, resolution, 4 * resolution)
            f = texture_map(to_tensor(im, size)[None], patch)[0]
            out.append((f.numpy(), (size[1] // patch, size[0] // patch), None))
        return out

    return run


# ------------------------------------------------------------------------------------ scoring


def truth_at(mask: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
    """Pixel mask -> majority class per token on ``grid`` (the mask is resized to the model
    input with nearest neighbour first). -> (h, w)."""
    h, w = grid
    m = Image.fromarray(mask.astype(np.int32)).resize((w * patch, h * patch), Image.NEAREST)
    return patch_labels(np.asarray(m), patch)


def image_share(tokens: list[np.ndarray]) -> float:
    """Share of the (L2-normalised, as k-means sees them) token variance explained by image
    identity: between-image sum of squares / total sum of squares, in [0, 1]. 1 = every image's
    tokens are all alike (the image is all there is); 0 = every image has the same token mean.
    tokens: one (N_i, D) array per image."""
    x = [_normalise(t).astype(np.float64) for t in tokens]
    allx = np.concatenate(x)
    mean = allx.mean(0)
    total = float(((allx - mean) ** 2).sum())
    between = sum(len(t) * float(((t.mean(0) - mean) ** 2).sum()) for t in x)
    return between / total if total > 0 else 0.0


def argmax_spread(argmax: list[np.ndarray]) -> dict[str, float]:
    """How image-specific the argmax pseudo-concepts are: NMI with the image id (high = each
    image has a vocabulary of its own) and the median number of images a used pseudo-concept
    occurs in. argmax: one (N_i,) int array per image."""
    ids = np.concatenate([np.full(len(a), i) for i, a in enumerate(argmax)])
    concepts = np.concatenate(argmax)
    images_per = [len(np.unique(ids[concepts == c])) for c in np.unique(concepts)]
    return {
        "nmi_image_argmax": nmi(ids, concepts),
        "images_per_concept": float(np.median(images_per)),
    }


def score(feats: list[Feats], data: list[Labelled], patch: int, seed: int = 0) -> dict[str, float]:
    """-> mean and std of per-image ARI and mIoU, co-clustering NMI, image count, the image-
    identity share of the token variance, and (for a checkpoint with a concept head) the NMI of
    the argmax pseudo-concepts with the classes and the ``argmax_spread`` measures. Tokens whose
    cell is mostly ``UNLABELLED`` (hand-drawn boxes on photos) are left out of the k-means and
    of every score against the truth; the image share and argmax spread use all tokens."""
    aris, mious, labelled, truths, argmax = [], [], [], [], []
    for (t, grid, amax), item in zip(feats, data, strict=True):
        truth = truth_at(item.mask, grid, patch).ravel()
        keep = truth != UNLABELLED  # only labelled tokens are scored
        t, truth = t[keep], truth[keep]
        labelled.append(t)
        truths.append(truth)
        argmax.append(None if amax is None else amax[keep])
        k = len(np.unique(truth))
        if k < 2:  # one concept only: nothing to separate
            continue
        pred = kmeans_labels(t, k, seed)
        aris.append(ari(truth, pred))
        mious.append(matched_miou(truth, pred))
    if not aris:
        raise BenchmarkError("no image has two or more ground-truth concepts at patch level")
    n_classes = len(np.unique(np.concatenate(truths)))
    co = np.concatenate(cocluster(labelled, n_classes, seed))
    head: dict[str, float | None] = {
        "nmi_concepts": None,
        "nmi_image_argmax": None,
        "images_per_concept": None,
    }
    if feats[0][2] is not None:
        head = {"nmi_concepts": nmi(np.concatenate(truths), np.concatenate(argmax))}
        head.update(argmax_spread([f[2] for f in feats]))
    return {
        **head,
        "image_share": image_share([f[0] for f in feats]),
        "ari": float(np.mean(aris)),
        "ari_std": float(np.std(aris)),
        "miou": float(np.mean(mious)),
        "miou_std": float(np.std(mious)),
        "nmi": nmi(np.concatenate(truths), co),
        "images": len(aris),
    }


JACKKNIFE_GROUPS = 20  # at most this many scorings more: a larger folder leaves out groups
OVER_IMAGES = ("ari", "miou", "nmi")  # the scores against the truth that the jackknife reads


def left_out(
    feats: list[Feats], data: list[Labelled], patch: int, seed: int, groups: int = JACKKNIFE_GROUPS
) -> list[dict[str, float]] | None:
    """The jackknife over a folder's images: -> ``score`` with each group of images left out in
    turn (image i in group i mod G, G = min(images, groups): one image a group up to G images),
    None where that cannot be scored (fewer than three images, or a group left out leaves none
    with two concepts). A folder's seeds only restart k-means on the same images, so this, not
    the spread over seeds, says how much a result depends on which images the folder holds."""
    n = len(data)
    if n < 3:
        return None
    g = min(n, groups)
    out = []
    for drop in range(g):
        keep = [i for i in range(n) if i % g != drop]
        try:
            out.append(score([feats[i] for i in keep], [data[i] for i in keep], patch, seed))
        except BenchmarkError:
            return None
    return out


def jackknife_se(values: np.ndarray) -> float:
    """Standard error of a statistic from its G leave-one-(group-)out values (G,):
    sqrt((G - 1) / G * sum((v - mean(v))^2))."""
    v = np.asarray(values, dtype=float)
    return float(np.sqrt((v.size - 1) * v.var()))


def featurisers(
    enc: Encoder, resolution: int, layer: int, baselines: bool, seed: int, facet: str = "tokens"
) -> dict[str, Featuriser]:
    """The checkpoint and (optionally) the four baselines at the same resolution and patch
    (the random ViT with the same layer and facet; keys for keys+concepts: it has no head)."""
    out = {"checkpoint": encoder_features(enc, resolution, layer, facet)}
    if baselines:
        rand = "keys" if facet in HEAD_FACETS else facet
        out["random_vit"] = encoder_features(random_like(enc, seed), resolution, layer, rand)
        out["pixels"] = pixel_features(enc.patch_size, resolution)
        out["colour_stats"] = colour_features(enc.patch_size, resolution)
        out["texture_stats"] = texture_features(enc.patch_size, resolution)
    return out


HEAD_METRICS = ("nmi_concepts", "nmi_image_argmax", "images_per_concept")
METRICS = ("ari", "miou", "nmi", "image_share") + HEAD_METRICS


def _summary(per_seed: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: each metric's mean and std over seeds (head metrics where there is a head)."""
    summary = {}
    for name, rows in per_seed.items():
        summary[name] = {"images_per_seed": rows[0]["images"]}
        for m in METRICS:
            if rows[0].get(m) is None:
                continue
            summary[name][m] = float(np.mean([r[m] for r in rows]))
            summary[name][f"{m}_sd_seeds"] = float(np.std([r[m] for r in rows]))
    return summary


def _over_images(methods: dict[str, dict], loo: dict[str, list[list[dict] | None]]) -> None:
    """Adds the jackknife over a folder's images (each left-out score a mean over seeds) to
    each method: ``{m}_se_images``; for each baseline also ``{m}_gap``, the checkpoint minus it,
    and ``{m}_gap_se_images``, paired (the same images are left out of both)."""
    values = {
        name: {m: np.mean([[x[m] for x in run] for run in runs], 0) for m in OVER_IMAGES}
        for name, runs in loo.items()
    }
    mine = values["checkpoint"]
    for name, v in values.items():
        for m in OVER_IMAGES:
            methods[name][f"{m}_se_images"] = jackknife_se(v[m])
            if name != "checkpoint":
                methods[name][f"{m}_gap"] = methods["checkpoint"][m] - methods[name][m]
                methods[name][f"{m}_gap_se_images"] = jackknife_se(mine[m] - v[m])


def evaluate(
    enc: Encoder,
    data_spec: str,
    seeds: list[int],
    resolution: int | None = None,
    layer: int = -1,
    baselines: bool = True,
    modes: list[str] | tuple[str, ...] = ("fixed",),
    facet: str = "tokens",
) -> dict:
    """Scores the checkpoint (and the baselines) on ``data_spec`` for each seed and scene mode
    (synthetic data only; a folder is scored once); the seed picks the synthetic scenes,
    k-means' initialisation and the random ViT. ``resolution`` None = the checkpoint's training
    size (the scale its features were learnt at), else the images'.
    -> {"by_mode": {mode: {"methods": {name: {metric: mean over seeds, metric_sd_seeds: std
    over seeds, images_per_seed}}, "per_seed": {name: [scores per seed]}}}, "methods" and
    "per_seed": those of the first mode, ...}. A folder's methods also get the jackknife over its
    images (``_over_images``; up to ``JACKKNIFE_GROUPS`` more scorings a method and seed)."""
    if not data_spec.startswith("synthetic:"):
        modes = ("folder",)
    by_mode = {}
    for mode in modes:
        per_seed: dict[str, list[dict]] = {}
        loo: dict[str, list[list[dict] | None]] = {}
        for s in seeds:
            data = load_benchmark(data_spec, s, "fixed" if mode == "folder" else mode)
            res = resolution or int(enc.info.get("img_size") or min(data[0].image.size))
            for name, featurise in featurisers(enc, res, layer, baselines, s, facet).items():
                feats = featurise([d.image for d in data])
                per_seed.setdefault(name, []).append(
                    {"seed": s, **score(feats, data, enc.patch_size, s)}
                )
                if mode == "folder":
                    loo.setdefault(name, []).append(left_out(feats, data, enc.patch_size, s))
        by_mode[mode] = {"methods": _summary(per_seed), "per_seed": per_seed}
        if loo and all(r is not None for runs in loo.values() for r in runs):
            _over_images(by_mode[mode]["methods"], loo)
    first = by_mode[modes[0]]
    return {"data": data_spec, "seeds": seeds, "modes": list(modes), "by_mode": by_mode, **first}


_COLUMNS = (
    ("ARI", "ari"),
    ("mIoU", "miou"),
    ("NMI co-cl.", "nmi"),
    ("img share", "image_share"),
    ("NMI argmax", "nmi_concepts"),
    ("NMI arg/img", "nmi_image_argmax"),
    ("imgs/concept", "images_per_concept"),
)


def _cell(m: dict, k: str) -> str:
    """mean ± the jackknife's standard error over the images where there is one, else ± the
    std over seeds."""
    if k not in m:
        return "-"
    return f"{m[k]:.3f} ± {m.get(k + '_se_images', m[k + '_sd_seeds']):.3f}"


def format_table(result: dict) -> str:
    """One block per scene mode: a row per method, mean ± std over seeds per metric (a folder:
    ± the standard error over its images, then the checkpoint's paired gap to each baseline)."""
    lines = []
    for mode, got in result.get("by_mode", {"-": result}).items():
        lines.append(f"[{mode}] {'method':<12} " + " ".join(f"{h:>14}" for h, _ in _COLUMNS))
        for name, m in got["methods"].items():
            cells = [_cell(m, k) for _, k in _COLUMNS]
            lines.append(f"{'':<{len(mode) + 3}}{name:<12} " + " ".join(f"{c:>14}" for c in cells))
        for name, m in got["methods"].items():
            if "ari_gap" in m:
                gaps = [f"{h} {m[k + '_gap']:+.3f} ± {m[k + '_gap_se_images']:.3f}"
                        for h, k in _COLUMNS if k in OVER_IMAGES]  # fmt: skip
                lines.append(f"{'':<{len(mode) + 3}}checkpoint minus {name}: " + ", ".join(gaps))
    n, s = result["methods"]["checkpoint"]["images_per_seed"], len(result["seeds"])
    spread = "std over seeds"
    if "ari_se_images" in result["methods"]["checkpoint"]:
        spread = "standard error over the images (ARI, mIoU, NMI co-cl.: each left out once, the "
        spread += "jackknife), else std over seeds"
    lines.append(
        f"{n} images x {s} seeds ({result['data']}); ± = {spread}; img share = token variance "
        "explained by image identity; NMI arg/img = argmax pseudo-concepts vs image id"
    )
    return "\n".join(lines)
