"""Teacher data-token features (and pseudo-concept probabilities) for images, batched, cached.

Non-square images keep their aspect ratio: the shorter side goes to ``resolution`` and both
sides are rounded to patch multiples; timm interpolates the position embeddings.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mcssl.explore.encoder import Encoder
from mcssl.images import MEAN, STD


@dataclass(frozen=True)
class Settings:
    resolution: int = 224  # shorter side, pixels (rounded to a multiple of the patch size)
    max_side: int = 896  # cap on the longer side
    layer: int = -1  # block whose tokens are used (-1 = last, as in the paper)
    batch_size: int = 16


@dataclass
class ImageFeatures:
    tokens: np.ndarray  # (N, D) float32, block ``layer``, normalised by the final LayerNorm
    grid: tuple[int, int]  # (h, w) tokens, N = h * w
    input_size: tuple[int, int]  # (H, W) pixels the model saw
    probs: np.ndarray | None  # (N, K) pseudo-concept probabilities (last block), or None

    @property
    def argmax(self) -> np.ndarray | None:
        return None if self.probs is None else self.probs.argmax(1)


def model_size(w: int, h: int, patch: int, resolution: int, max_side: int) -> tuple[int, int]:
    """(width, height) of the model input: aspect kept, sides multiples of ``patch``."""
    scale = resolution / min(w, h)
    scale = min(scale, max_side / max(w, h)) if max(w, h) * scale > max_side else scale
    return max(patch, round(w * scale / patch) * patch), max(
        patch, round(h * scale / patch) * patch
    )


def to_tensor(img: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """RGB image -> normalised (3, H, W) float tensor at ``size`` = (W, H)."""
    arr = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def image_digest(img: Image.Image) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


class FeatureExtractor:
    """Encoder + settings -> ImageFeatures per image, with an LRU cache keyed by
    (checkpoint digest, image digest, settings)."""

    def __init__(self, encoder: Encoder, settings: Settings | None = None, cache: int = 512):
        self.encoder = encoder
        self.settings = settings or Settings()
        self.cache: OrderedDict[tuple, ImageFeatures] = OrderedDict()
        self.cache_size = cache
        self._digests: dict[int, tuple[weakref.ref, str]] = {}

    def _key(self, img: Image.Image) -> tuple:
        return (self.encoder.digest, self._digest(img), self.settings)

    def _digest(self, img: Image.Image) -> str:
        """image_digest, remembered per live image object (hashing pixels on every call costs
        milliseconds per large image; the app asks again on every rerun)."""
        ref, digest = self._digests.get(id(img), (None, ""))
        if ref is None or ref() is not img:
            digest = image_digest(img)
            self._digests[id(img)] = (weakref.ref(img), digest)
            if len(self._digests) > 4 * self.cache_size + 64:  # forget dead images
                self._digests = {k: v for k, v in self._digests.items() if v[0]() is not None}
        return digest

    @torch.inference_mode()
    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> tokens (B, N, D) of the chosen block, probs (B, N, K) or None."""
        enc, layer = self.encoder, self.settings.layer % self.encoder.depth
        last = enc.depth - 1
        x = batch.to(enc.device)
        if layer == last:  # forward_features is ~10% faster than forward_intermediates
            tokens = enc.backbone.forward_features(x)[:, enc.backbone.num_prefix_tokens :]
            return tokens, enc.concept_probs(tokens) if enc.has_concepts else None
        indices = [layer, last]
        outs = enc.backbone.forward_intermediates(
            x,
            indices=indices,
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            stop_early=True,
        )
        by_idx = dict(zip(indices, outs, strict=True))
        probs = enc.concept_probs(by_idx[last]) if enc.has_concepts else None
        return by_idx[layer], probs

    def __call__(self, images: list[Image.Image]) -> list[ImageFeatures]:
        s, p = self.settings, self.encoder.patch_size
        keys = [self._key(im) for im in images]
        found = {k: self.cache[k] for k in keys if k in self.cache}
        todo: dict[tuple[int, int], list[int]] = {}
        for i, (im, key) in enumerate(zip(images, keys, strict=True)):
            if key not in found:
                todo.setdefault(model_size(*im.size, p, s.resolution, s.max_side), []).append(i)
        for size, idx in todo.items():  # same-size images share a batch
            for j in range(0, len(idx), s.batch_size):
                chunk = idx[j : j + s.batch_size]
                x = torch.stack([to_tensor(images[i], size) for i in chunk])
                tokens, probs = self._run(x)
                grid = (size[1] // p, size[0] // p)
                for b, i in enumerate(chunk):
                    found[keys[i]] = ImageFeatures(
                        tokens[b].float().cpu().numpy(),
                        grid,
                        (size[1], size[0]),
                        None if probs is None else probs[b].cpu().numpy(),
                    )
                    self._put(keys[i], found[keys[i]])
        return [found[k] for k in keys]

    def _put(self, key: tuple, value: ImageFeatures) -> None:
        self.cache[key] = value
        self.cache.move_to_end(key)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
