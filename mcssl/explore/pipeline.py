"""Whole-image analyses used by the CLI and the app: concepts for a set of images, a token
index over a gallery, and queries against it. Bad images never stop a batch."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mcssl.explore.concepts import (
    cluster_mean_probs,
    cocluster_for_ks,
    concepts_for_ks,
    top_concepts,
    upsample_labels,
)
from mcssl.explore.features import FeatureExtractor, ImageFeatures
from mcssl.explore.index import Hit, TokenIndex
from mcssl.explore.render import overlay, side_by_side
from mcssl.images import DEFAULT_MAX_PIXELS, ImageError, decode_rgb, find_images

MIN_SIDE = 8  # pixels; anything smaller carries no spatial structure to cluster


def expand_inputs(items: list[str | Path]) -> list[Path]:
    """Files stay as given (even odd extensions: they get a clear error later); folders are
    searched recursively for images."""
    out: list[Path] = []
    for item in map(Path, items):
        out.extend(find_images(item) if item.is_dir() else [item])
    return out


def open_image(
    path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> Image.Image:
    """A file (or an upload's ``data``, named ``path``) -> RGB; one wording per failure for
    the CLI, folders and uploads."""
    source = io.BytesIO(data) if data is not None else Path(path)
    img = decode_rgb(source, str(path), max_pixels)
    if min(img.size) < MIN_SIDE:
        raise ImageError(
            f"{path}: {img.width}x{img.height} pixels is too small (at least {MIN_SIDE} per side)"
        )
    return img


@dataclass
class ImageConcepts:
    """k-means concepts of one image (or its error)."""

    path: str
    image: Image.Image | None = None
    features: ImageFeatures | None = None
    labels: dict[int, np.ndarray] = field(default_factory=dict)  # k -> (gh, gw)
    error: str | None = None

    def to_json(self, top_n: int = 5) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        f = self.features
        assert f is not None and self.image is not None
        out = {
            "path": self.path,
            "size": list(self.image.size),
            "grid": list(f.grid),
            "labels": {str(k): v.tolist() for k, v in self.labels.items()},
            "error": None,
        }
        if f.probs is not None:  # each cluster's top pseudo-concepts
            out["top_concepts"] = {
                str(k): [top_concepts(m, top_n) for m in cluster_mean_probs(f.probs, v.ravel(), k)]
                for k, v in self.labels.items()
            }
        return out


def featurise(extractor: FeatureExtractor, paths: list[Path]) -> Iterator[ImageConcepts]:
    """Opens and embeds images batch by batch; a bad image becomes an error record."""
    batch = extractor.settings.batch_size
    for i in range(0, len(paths), batch):
        images, results = [], []
        for p in paths[i : i + batch]:
            try:
                images.append(open_image(p))
                results.append(ImageConcepts(str(p), images[-1]))
            except ImageError as e:
                results.append(ImageConcepts(str(p), error=str(e)))
        feats = iter(extractor(images))
        for r in results:
            if r.error is None:
                r.features = next(feats)
            yield r


def analyse(
    extractor: FeatureExtractor,
    paths: list[Path],
    ks: tuple[int, ...],
    seed: int = 0,
    cocluster: bool = False,
) -> list[ImageConcepts]:
    """k-means for every k per image (or, with ``cocluster``, one k-means over the tokens of
    all images, so a concept id means the same cluster everywhere); colours matched k -> k+1."""
    results = list(featurise(extractor, paths))
    good = [r for r in results if r.features is not None]
    labels = label_features([r.features for r in good], ks, seed, cocluster)
    for r, lab in zip(good, labels, strict=True):
        r.labels = lab
    return results


def label_features(
    feats: list[ImageFeatures],
    ks: tuple[int, ...],
    seed: int = 0,
    cocluster: bool = False,
    chain: Sequence[int] = (),
) -> list[dict[int, np.ndarray]]:
    """k-means labels per image as {k: (gh, gw)} for k in ``ks``: per image, or one
    co-clustering of all. Colours are chained from the smallest k up; with ``chain`` (e.g.
    every k a user can pick), every k of it up to max(ks) is clustered too, so the labels
    (colours) of a k do not depend on which other ks are asked for."""
    if not feats:
        return []
    run = tuple(sorted(set(ks) | {c for c in chain if c <= max(ks)}))
    if cocluster:
        per_k = cocluster_for_ks([f.tokens for f in feats], run, seed)
        flat = [{k: per_k[k][i] for k in per_k} for i in range(len(feats))]
    else:
        flat = [concepts_for_ks(f.tokens, run, seed) for f in feats]
    return [
        {k: lab[k].reshape(f.grid) for k in sorted(ks)} for f, lab in zip(feats, flat, strict=True)
    ]


def write_concepts(
    results: list[ImageConcepts], out_dir: Path, alpha: float = 0.5, smooth: bool = False
) -> list[dict]:
    """Per image and k: an overlay PNG, a label-map PNG at image resolution (pixel value =
    concept id), and a Figure-1 strip; returns the JSON records."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, r in enumerate(results):
        rec = r.to_json()
        if r.error is None and r.image is not None:
            stem = f"{i:03d}_{Path(r.path).stem}"
            shown, files = [r.image], {}
            for k, grid in r.labels.items():
                full = upsample_labels(grid, (r.image.height, r.image.width), smooth)
                over = overlay(r.image, full, alpha)
                over.save(out_dir / f"{stem}_k{k}.png")
                Image.fromarray(full.astype(np.uint8), "L").save(out_dir / f"{stem}_k{k}_mask.png")
                files[str(k)] = {"overlay": f"{stem}_k{k}.png", "mask": f"{stem}_k{k}_mask.png"}
                shown.append(over)
            caps = ["image"] + [f"k={k}" for k in r.labels]
            side_by_side(shown, caps, height=224).save(out_dir / f"{stem}_strip.png")
            rec["files"] = files | {"strip": f"{stem}_strip.png"}
        records.append(rec)
    return records


def concepts_json(records: list[dict], checkpoint: str, digest: str, settings: dict) -> str:
    return json.dumps(
        {
            "checkpoint": checkpoint,
            "checkpoint_digest": digest,
            "settings": settings,
            "images": records,
        },
        indent=1,
    )


# ---- retrieval --------------------------------------------------------------------------


def build_index(
    extractor: FeatureExtractor, paths: list[Path], kind: str = "auto", progress: bool = True
) -> tuple[TokenIndex, list[str]]:
    """Streams images through the encoder into a TokenIndex; returns it and the errors."""
    index: TokenIndex | None = None
    errors: list[str] = []
    batch = extractor.settings.batch_size
    bar = tqdm(total=len(paths), desc="index", disable=not progress, unit="img")
    for i in range(0, len(paths), batch):
        good, images = [], []
        for p in paths[i : i + batch]:
            try:
                images.append(open_image(p))
                good.append(p)
            except ImageError as e:
                errors.append(str(e))
        for p, f in zip(good, extractor(images), strict=True):
            if index is None:
                index = TokenIndex(f.tokens.shape[1], kind=kind, expected=None)
            index.add_image(f.tokens, f.grid, str(p), f.argmax)
        bar.update(len(paths[i : i + batch]))
    bar.close()
    if index is None:
        raise ImageError("no readable images to index" + (f" ({errors[0]})" if errors else ""))
    return index, errors


def query_image_cluster(
    index: TokenIndex,
    extractor: FeatureExtractor,
    image: Path,
    k: int,
    cluster: int,
    top: int,
    same_concept: bool = False,
    exclude_own: bool = False,
    one_per_image: bool = False,
    seed: int = 0,
) -> list[Hit]:
    """Query by the mean of one k-means cluster of an image (a region, not a single token)."""
    if not 0 <= cluster < k:
        raise ImageError(f"cluster {cluster} does not exist for k={k} (0..{k - 1})")
    (f,) = extractor([open_image(image)])
    members = concepts_for_ks(f.tokens, (k,), seed)[k] == cluster
    if not members.any():
        raise ImageError(f"cluster {cluster} of k={k} is empty in {image}")
    concept = None
    if same_concept and f.argmax is not None:  # the cluster's most frequent pseudo-concept
        concept = int(np.bincount(f.argmax[members]).argmax())
    own = [i for i, rec in enumerate(index.images) if Path(rec["path"]) == image]
    exclude = own[0] if exclude_own and own else None
    return index.search(
        f.tokens[members],
        top,
        same_concept=concept,
        exclude_image=exclude,
        one_per_image=one_per_image,
    )


def query_image_token(
    index: TokenIndex,
    extractor: FeatureExtractor | None,
    image: Path,
    row: int,
    col: int,
    top: int,
    same_concept: bool = False,
    exclude_own: bool = False,
    one_per_image: bool = False,
) -> list[Hit]:
    """Query by a token of an indexed image, or of a new image (needs an extractor)."""
    known = [i for i, rec in enumerate(index.images) if Path(rec["path"]) == image]
    if known:
        return index.query_token(
            known[0],
            row,
            col,
            top=top,
            same_concept=same_concept,
            exclude_image=known[0] if exclude_own else None,
            one_per_image=one_per_image,
        )
    if extractor is None:
        raise ImageError(f"{image} is not in the index; pass --checkpoint to embed it")
    (f,) = extractor([open_image(image)])
    gh, gw = f.grid
    if not (0 <= row < gh and 0 <= col < gw):
        raise ImageError(f"token ({row}, {col}) is outside the {gh}x{gw} token grid of {image}")
    n = row * gw + col
    concept = int(f.argmax[n]) if same_concept and f.argmax is not None else None
    return index.search(f.tokens[n], top, same_concept=concept, one_per_image=one_per_image)
