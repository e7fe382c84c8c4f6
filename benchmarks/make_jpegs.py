"""Writes N random-crop JPEGs cut from the bundled sample photos, for the data-loader benchmark.

python benchmarks/make_jpegs.py /tmp/jpegs -n 2000
python benchmarks/train_throughput.py --data-dir /tmp/jpegs --workers 2
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image

from mcssl.images import sample_photos


def make_jpegs(
    out: Path, n: int, seed: int = 0, min_frac: float = 0.5, short_side: int = 0, quality: int = 90
) -> list[Path]:
    """Crops of random size (at least ``min_frac`` of each side) and position, flipped half
    the time, optionally resized to a shorter side of ``short_side`` px."""
    rng = random.Random(seed)
    photos = list(sample_photos().values())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = photos[rng.randrange(len(photos))]
        w, h = img.size
        cw, ch = rng.randint(int(min_frac * w), w), rng.randint(int(min_frac * h), h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if short_side:
            s = short_side / min(cw, ch)
            crop = crop.resize((max(1, round(cw * s)), max(1, round(ch * s))), Image.BICUBIC)
        path = out / f"img_{i:06d}.jpg"
        crop.save(path, quality=quality)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write into (created)")
    p.add_argument("-n", type=int, default=2000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-frac", type=float, default=0.5, help="smallest crop side fraction")
    p.add_argument("--short-side", type=int, default=0, help="resize to this shorter side; 0 = no")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    a = p.parse_args(argv)
    paths = make_jpegs(a.out, a.n, a.seed, a.min_frac, a.short_side, a.quality)
    size = sum(q.stat().st_size for q in paths)
    print(f"wrote {len(paths)} JPEGs ({size / 2**20:.1f} MiB) to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
