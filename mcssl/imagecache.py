"""A pre-resized image cache: decode and resize a dataset once, then read it for free.

``mcssl cache DATA OUT.npy --size S`` writes every readable image of DATA (any source that
``data.path`` takes) resized so that its short side is S and centre-cropped to S x S, as one
uint8 array (N, S, S, 3) in a .npy file (memory-mapped when read) plus OUT.json describing it.
Training reads it with ``data.path=cache:OUT.npy``: no JPEG decoding, no resizing of large
photos, the same augmentations. The trade-off: what lies outside the central square is lost,
and random crops start from S x S (choose S >= the crop size; 256 for 224 crops).
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from mcssl.images import ImageError, load_rgb

log = logging.getLogger(__name__)


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


def square(img: Image.Image, size: int) -> np.ndarray:
    """Short side -> ``size`` (bicubic, anti-aliased), centre crop -> (size, size, 3) uint8."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def load_item(item: Path | Image.Image | CachedImage, max_pixels: int) -> Image.Image:
    """Any data item (a file, an image in memory, an image of a cache) -> RGB image."""
    if isinstance(item, CachedImage):
        return Image.fromarray(item.array())
    return item if isinstance(item, Image.Image) else load_rgb(item, max_pixels)


def _square_item(item: Path | Image.Image | CachedImage, size: int, mp: int) -> np.ndarray | str:
    try:
        return square(load_item(item, mp), size)
    except ImageError as e:
        return str(e)


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


def build_cache(
    source: str, out: str | Path, size: int = 256, workers: int = 4,
    max_pixels: int = 100_000_000,
) -> dict:  # fmt: skip
    """Writes OUT (.npy) and OUT.json; unreadable images are left out and listed (their rows
    stay unused at the end of the file). -> the JSON written (count, size, source, skipped,
    seconds)."""
    from mcssl.data import resolve_items

    out = Path(out)
    if out.suffix != ".npy":
        raise CacheError(f"{out}: the cache file name must end in .npy")
    if size < 8:
        raise CacheError(f"--size {size}: too small for an image cache")
    items, desc = resolve_items(source)
    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")  # a crash never leaves a half cache behind
    arr = np.lib.format.open_memmap(tmp, "w+", np.uint8, (len(items), size, size, 3))
    n, skipped = 0, []
    with ProcessPoolExecutor(max(1, workers)) as pool:
        args = ([size] * len(items), [max_pixels] * len(items))
        for got in pool.map(_square_item, items, *args, chunksize=16):
            if isinstance(got, str):
                skipped.append(got)
                log.warning("cache: skipping %s", got)
            else:
                arr[n] = got
                n += 1
    arr.flush()
    del arr
    if n == 0:
        tmp.unlink()
        raise CacheError(f"{source}: no readable images to cache")
    info = {"source": desc, "count": n, "size": size, "skipped": skipped,
            "seconds": round(time.time() - t0, 1)}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    tmp.replace(out)
    open_cache.cache_clear()
    return info
