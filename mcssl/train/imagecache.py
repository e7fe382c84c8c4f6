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
from pathlib import Path

import numpy as np
from PIL import Image

from mcssl.images import ImageError
from mcssl.train.sources import CachedImage, CacheError, load_item, open_cache, resolve_items

log = logging.getLogger(__name__)


def square(img: Image.Image, size: int) -> np.ndarray:
    """Short side -> ``size`` (bicubic, anti-aliased), centre crop -> (size, size, 3) uint8."""
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def _square_item(item: Path | Image.Image | CachedImage, size: int, mp: int) -> np.ndarray | str:
    try:
        return square(load_item(item, mp), size)
    except ImageError as e:
        return str(e)


def build_cache(
    source: str, out: str | Path, size: int = 256, workers: int = 4,
    max_pixels: int = 100_000_000,
) -> dict:  # fmt: skip
    """Writes OUT (.npy) and OUT.json; unreadable images are left out and listed (their rows
    stay unused at the end of the file). -> the JSON written (count, size, source, skipped,
    seconds)."""
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
