"""Teacher data-token features (and pseudo-concept probabilities) for images, batched, cached.

Non-square images keep their aspect ratio: the shorter side goes to ``resolution`` and both
sides are rounded to patch multiples; timm interpolates the position embeddings.
"""

from __future__ import annotations

import hashlib
import platform
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from mcssl.explore.encoder import FACETS, HEAD_FACETS, Encoder, EncoderError
from mcssl.images import MEAN, STD


@dataclass(frozen=True)
class Settings:
    resolution: int = 224  # shorter side, pixels (rounded to a multiple of the patch size)
    max_side: int = 896  # cap on the longer side
    layer: int = -1  # block whose tokens are used (-1 = last, as in the paper)
    # tokens: the block's output (final LayerNorm); keys: its attention keys; keys+concepts:
    # the keys beside the pseudo-concept probabilities (see block_features)
    facet: str = "tokens"
    batch_size: int = 16
    precision: str = "fp32"  # fp32 | bf16 | auto (bf16 where the CPU/GPU computes it natively)


@dataclass
class ImageFeatures:
    tokens: np.ndarray  # (N, D) float32: block ``layer``'s ``facet`` (see Settings)
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


PRECISIONS = ("fp32", "bf16", "auto")
FALLBACK = {"resolution": 224, "layer": -1, "facet": "tokens"}  # without stored defaults


def check_facet(facet: str, enc: Encoder | None = None) -> str:
    """``facet`` if it is one of FACETS and (given ``enc``) that encoder can compute it."""
    if facet not in FACETS:
        raise ValueError(f"facet must be one of {', '.join(FACETS)}, got {facet!r}")
    if enc is not None and facet in HEAD_FACETS and not enc.has_concepts:
        raise EncoderError(f"facet {facet} needs a patch-concept head, which this model lacks")
    return facet


def facets_of(enc: Encoder) -> tuple[str, ...]:
    """The facets ``enc`` can compute."""
    return FACETS if enc.has_concepts else tuple(f for f in FACETS if f not in HEAD_FACETS)


def with_concepts(keys: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """keys (..., C), probs (..., K) -> (..., C + K): the L2-normalised keys beside the
    L2-normalised square roots of the probabilities (the Hellinger embedding of a distribution,
    in which the Euclidean distance suits k-means), so each half weighs the same. The keys
    separate regions within an image; the pseudo-concepts, trained to be shared across images,
    make a region's cluster follow its kind across images (docs/RESULTS.md, round 5)."""
    norm = torch.nn.functional.normalize
    return torch.cat([norm(keys.float(), dim=-1), norm(probs.float().sqrt(), dim=-1)], -1)


def chosen(
    stored: dict[str, int | str], fallback: dict[str, int | str] | None = None, **given: object
) -> dict[str, int | str]:
    """resolution / layer / facet: what was ``given`` (not None), else the checkpoint's
    ``stored`` defaults (``Encoder.defaults``), else ``fallback`` (default: FALLBACK)."""
    fallback = FALLBACK if fallback is None else fallback
    return {
        k: given[k] if given.get(k) is not None else stored.get(k, fallback[k])
        for k in ("resolution", "layer", "facet")
    }


@torch.inference_mode()
def block_features(
    enc: Encoder, x: torch.Tensor, views: list[tuple[int, str]]
) -> tuple[dict[tuple[int, str], torch.Tensor], torch.Tensor | None]:
    """One forward pass -> each view's data-token features and the pseudo-concept
    probabilities (last block; None without a head).

    x: (B, 3, H, W) in ``enc``'s dtype; views: (layer in 0..depth-1, facet) pairs.
    -> {view: (B, N, C)}, (B, N, K) or None. ``tokens`` = the block's output normalised by
    the final LayerNorm (C = D); ``keys`` = the keys of the block's self-attention, all heads
    concatenated (C = heads x head dim), read from the attn.qkv projection by a forward hook
    (after the attention's k_norm, as the attention uses them); ``keys+concepts`` =
    ``with_concepts`` of those keys and the probabilities (C = heads x head dim + K)."""
    last, pre = enc.depth - 1, enc.backbone.num_prefix_tokens
    keys: dict[int, torch.Tensor] = {}

    def grab(layer: int):
        attn = enc.backbone.blocks[layer].attn

        def hook(_m: torch.nn.Module, _inp: tuple, qkv: torch.Tensor) -> None:
            b, n, _ = qkv.shape  # timm: qkv.reshape(B, N, 3, heads, head_dim), k = [:, :, 1]
            k = qkv.reshape(b, n, 3, attn.num_heads, -1)[:, :, 1].transpose(1, 2)
            keys[layer] = attn.k_norm(k).transpose(1, 2).reshape(b, n, -1)[:, pre:]

        return attn.qkv.register_forward_hook(hook)

    for _, facet in views:
        check_facet(facet, enc)
    handles = [grab(layer) for layer in {la for la, facet in views if facet != "tokens"}]
    try:
        indices = sorted({layer for layer, facet in views if facet == "tokens"} | {last})
        if indices == [last]:  # forward_features is ~10% faster than forward_intermediates
            outs = [enc.backbone.forward_features(x)[:, pre:]]
        else:
            outs = enc.backbone.forward_intermediates(
                x, indices=indices, norm=True, output_fmt="NLC", intermediates_only=True,
                stop_early=True,
            )  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    by_idx = dict(zip(indices, outs, strict=True))
    probs = enc.concept_probs(by_idx[last]) if enc.has_concepts else None

    def view(la: int, f: str) -> torch.Tensor:
        if f == "tokens":
            return by_idx[la]
        return keys[la] if f == "keys" else with_concepts(keys[la], probs)  # type: ignore[arg-type]

    return {(la, f): view(la, f) for la, f in views}, probs


@lru_cache(maxsize=4)
def bf16_native(device: str) -> bool:
    """Does ``device`` compute bf16 matrix products natively (so bf16 is faster, not just
    smaller)? CUDA: torch says; CPU: the avx512_bf16 / amx_bf16 (x86) or bf16 (Arm) flag.
    Without it PyTorch emulates bf16 on the CPU, which is slower than fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu" or platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "").split()
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def compute_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """Settings.precision on ``device`` -> the dtype the encoder runs in."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if bf16_native(torch.device(device).type) else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


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
        self.dtype = compute_dtype(self.settings.precision, encoder.device)
        check_facet(self.settings.facet, encoder)
        self.cache: OrderedDict[tuple, ImageFeatures] = OrderedDict()
        self.cache_size = cache
        self.encoded = 0  # images run through the encoder so far (cache misses)
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

    def _run(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, 3, H, W) -> features (B, N, C) of the chosen block and facet, probs (B, N, K)
        or None."""
        enc = self.encoder.cast(self.dtype)  # a bf16 copy (made once) or the encoder itself
        view = (self.settings.layer % enc.depth, self.settings.facet)
        feats, probs = block_features(enc, batch.to(enc.device, self.dtype), [view])
        return feats[view], probs

    @property
    def dtype_name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def missing(self, images: list[Image.Image]) -> int:
        """How many of ``images`` are not cached yet (what a call would compute)."""
        return len({k for k in map(self._key, images) if k not in self.cache})

    def __call__(
        self, images: list[Image.Image], progress: Callable[[int, int], None] | None = None
    ) -> list[ImageFeatures]:
        """``progress(done, total)`` is called after each batch of uncached images; with it,
        batches hold at most 2 images so that progress is seen (on a CPU the cost per image
        hardly depends on the batch size)."""
        s, p = self.settings, self.encoder.patch_size
        keys = [self._key(im) for im in images]
        found = {k: self.cache[k] for k in keys if k in self.cache}
        todo: dict[tuple[int, int], list[int]] = {}
        for i, (im, key) in enumerate(zip(images, keys, strict=True)):
            if key not in found:
                todo.setdefault(model_size(*im.size, p, s.resolution, s.max_side), []).append(i)
        step = s.batch_size if progress is None else min(s.batch_size, 2)
        total, done = sum(map(len, todo.values())), 0
        for size, idx in todo.items():  # same-size images share a batch
            for j in range(0, len(idx), step):
                chunk = idx[j : j + step]
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
                done += len(chunk)
                self.encoded += len(chunk)
                if progress is not None:
                    progress(done, total)
        return [found[k] for k in keys]

    def _put(self, key: tuple, value: ImageFeatures) -> None:
        self.cache[key] = value
        self.cache.move_to_end(key)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
