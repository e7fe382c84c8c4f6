"""Analysis latency vs the bare backbone, measured in the same run on the same images.

    python benchmarks/explore_latency.py [--arch vit_small_patch16_224] [--images 8]

Per image: features + pseudo-concept probabilities + k-means for k = 2, 3, 4 (what the app
and `mcssl concepts` do), against `backbone.forward_features` alone. Gallery indexing
(features + probabilities + FAISS add) against backbone-only images/s. Random weights: the
cost does not depend on what the model learnt.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from mcssl.config import ModelConfig
from mcssl.explore.concepts import concepts_for_ks
from mcssl.explore.encoder import Encoder
from mcssl.explore.features import FeatureExtractor, Settings, model_size, to_tensor
from mcssl.explore.index import TokenIndex
from mcssl.images import sample_photos
from mcssl.models import Student


def encoder_for(arch: str, patch: int, k: int, head: bool = True) -> Encoder:
    cfg = ModelConfig(arch=arch, patch_size=patch, drop_path=0.0, num_concepts=k)
    s = Student(cfg).eval().requires_grad_(False)
    if not head:  # like a DINO checkpoint: no pseudo-concept probabilities
        return Encoder(s.backbone, None, None, 0.04, {}, digest="bench")
    return Encoder(s.backbone, s.concept_head, torch.zeros(k), 0.04, {}, digest="bench")


def best_of(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="vit_small_patch16_224")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--num-concepts", type=int, default=8192)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-head", action="store_true", help="backbone only (no probabilities)")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.manual_seed(0)
    enc = encoder_for(args.arch, args.patch, args.num_concepts, head=not args.no_head)
    photos = [p.convert("RGB") for p in sample_photos().values()][: args.images]
    sizes = [model_size(*p.size, args.patch, args.resolution, 896) for p in photos]
    tensors = [to_tensor(p, s)[None] for p, s in zip(photos, sizes, strict=True)]

    @torch.inference_mode()
    def bare() -> None:
        for x in tensors:
            enc.backbone.forward_features(x)

    def analysis() -> None:  # fresh extractor: no cache hits
        ex = FeatureExtractor(enc, Settings(resolution=args.resolution, batch_size=1))
        for p in photos:
            (f,) = ex([p])
            concepts_for_ks(f.tokens, (2, 3, 4), 0)

    def indexing() -> None:
        ex = FeatureExtractor(enc, Settings(resolution=args.resolution, batch_size=8))
        index = TokenIndex(enc.backbone.num_features)
        for f in ex(photos):
            index.add_image(f.tokens, f.grid, "x", f.argmax)

    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for x, size in zip(tensors, sizes, strict=True):
        groups.setdefault(size, []).append(x)
    batches = [torch.cat(g) for g in groups.values()]

    @torch.inference_mode()
    def bare_batched() -> None:  # same grouping by size as the indexer
        for x in batches:
            enc.backbone.forward_features(x)

    bare()  # warm-up
    analysis()
    t_bare = best_of(bare, args.reps)
    t_an = best_of(analysis, args.reps)
    t_idx = best_of(indexing, args.reps)
    t_bare_b = best_of(bare_batched, args.reps)
    n = len(photos)
    res = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "arch": args.arch,
        "patch": args.patch,
        "num_concepts": 0 if args.no_head else args.num_concepts,
        "images": n,
        "mean_tokens": float(np.mean([(w // args.patch) * (h // args.patch) for w, h in sizes])),
        "bare_ms_per_image": 1000 * t_bare / n,
        "analysis_ms_per_image": 1000 * t_an / n,
        "analysis_over_bare": t_an / t_bare,
        "bare_batched_images_per_s": n / t_bare_b,
        "index_images_per_s": n / t_idx,
        "index_over_bare": t_bare_b / t_idx,
    }
    for k, v in res.items():
        print(f"{k:>24}: {v:.3f}" if isinstance(v, float) else f"{k:>24}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
