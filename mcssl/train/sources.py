"""Where training images come from: ``data.path`` sources (folders, file lists, the bundled
photos, generated scenes, ``cache:FILE.npy``) resolved to items, and items loaded as images.

Shared by the loader (``data``) and the cache builder (``imagecache``), which import this
module and not each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from mcssl.images import IMAGE_EXTENSIONS, find_images, load_rgb, sample_photos
from mcssl.scenes import make_scenes, spec_for

# data.path sources of generated scenes -> the benchmark mode they draw from
SCENE_SOURCES = {"synthetic": "fixed", "synthetic-varied": "varied"}


class DataError(ValueError):
    """A data problem the user can fix; one-line message."""


class CacheError(ValueError):
    """A cache that cannot be built or read; one-line message."""


@dataclass(frozen=True)
class CachedImage:
    """One image of a cache, loaded lazily (cheap to hold a million of them)."""

    file: str
    index: int

    def array(self) -> np.ndarray:
        """-> (S, S, 3) uint8."""
        return open_cache(self.file)[self.index]


def load_item(item: Path | Image.Image | CachedImage, max_pixels: int) -> Image.Image:
    """Any data item (a file, an image in memory, an image of a cache) -> RGB image."""
    if isinstance(item, CachedImage):
        return Image.fromarray(item.array())
    return item if isinstance(item, Image.Image) else load_rgb(item, max_pixels)


@lru_cache(maxsize=8)
def open_cache(file: str) -> np.ndarray:
    """The cache array, memory-mapped read-only (once per process)."""
    try:
        arr = np.load(file, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise CacheError(f"{file}: not a readable mcssl image cache ({e})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != arr.shape[2] or arr.shape[3] != 3:
        raise CacheError(f"{file}: expected a uint8 (N, S, S, 3) array, found {arr.dtype} "
                         f"{tuple(arr.shape)}")  # fmt: skip
    count = _meta(file).get("count")  # rows past it are room left by skipped images
    return arr if count is None else arr[: int(count)]


def _meta(file: str) -> dict:
    meta = Path(file).with_suffix(".json")
    try:
        return json.loads(meta.read_text()) if meta.exists() else {}
    except (OSError, ValueError) as e:
        raise CacheError(f"{meta}: unreadable cache description ({e})") from None


def cache_items(file: str) -> tuple[list[CachedImage], str]:
    """``cache:FILE`` as a data source -> items and a description."""
    arr = open_cache(str(file))
    source = _meta(file).get("source", "?")
    desc = f"cache {file} ({arr.shape[0]} images at {arr.shape[1]} px of {source})"
    return [CachedImage(str(file), i) for i in range(arr.shape[0])], desc


def _one_source(source: str) -> tuple[list[Path | Image.Image], str]:
    if source.startswith("cache:"):
        try:
            return cache_items(source[len("cache:") :])
        except CacheError as e:
            raise DataError(str(e)) from None
    if source == "samples":
        photos = sample_photos()
        return list(photos.values()), f"{len(photos)} scikit-image/scikit-learn photos"
    kind, _, rest = source.partition(":")
    if kind in SCENE_SOURCES:
        n, _, seed = rest.partition(":")
        try:
            n_i, seed_i = int(n), int(seed or 0)
        except ValueError:
            raise DataError(f"{source}: expected {kind}:N or {kind}:N:SEED") from None
        if n_i < 1:
            raise DataError(f"{source}: N must be at least 1")
        mode = SCENE_SOURCES[kind]
        scenes = make_scenes(n_i, seed_i, spec_for(mode))
        desc = f"{n_i} synthetic scenes" + ("" if mode == "fixed" else f" ({mode})")
        return [Image.fromarray(img) for img, _ in scenes], desc
    try:
        files = find_images(source)
    except FileNotFoundError as e:
        raise DataError(str(e)) from None
    if not files:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise DataError(f"no images found under {source} (looked for {exts}, recursively)")
    return list(files), f"{source}: {len(files)} images"


def resolve_items(path: str) -> tuple[list[Path | Image.Image], str]:
    """data.path -> items and a short description of the data (saved in the export).

    ``path`` is one source or several joined by ``+``; a source is ``samples`` (the bundled
    photos), ``synthetic:N[:SEED]`` / ``synthetic-varied:N[:SEED]`` (generated scenes of the
    benchmark's ``fixed`` / ``varied`` mode), ``cache:FILE.npy`` (built by ``mcssl
    cache``), a folder or a .txt file list, and may
    end in ``*M`` to repeat its items M times (to weight a small source against a large one)."""
    items: list[Path | Image.Image] = []
    descs = []
    for part in path.split("+"):
        source, _, times = part.strip().partition("*")
        try:
            m = int(times or 1)
        except ValueError:
            raise DataError(f"{part}: expected SOURCE*M with an integer M") from None
        got, desc = _one_source(source)
        items += got * max(1, m)
        descs.append(desc + (f" x{m}" if m > 1 else ""))
    return items, " + ".join(descs)
