"""Shared by training and exploration: robust image loading (anything Pillow reads -> RGB) and
the normalisation every model here uses."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import IO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000
MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: every model here is normalised with them
STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 grey, as PIL's convert("L")


class ImageError(ValueError):
    """An image that cannot be used; the message is one line and names the file."""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode (palette, greyscale, 16-bit, float, CMYK, with alpha) -> 8-bit RGB.

    Transparent pixels are put on white, as a viewer would show them."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.round().astype(np.uint8), "L")
    if img.mode == "P" or img.mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB") if img.mode != "RGB" else img


def too_large(name: str, pixels: int, max_pixels: int) -> ImageError:
    """The one wording for an image over the pixel limit, ours or Pillow's bomb check."""
    return ImageError(
        f"{name}: {pixels:,} pixels exceeds the limit of {max_pixels:,} "
        "(refused as a possible decompression bomb)"
    )


def _reason(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not an image format Pillow can read"
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return "the file is truncated" if "truncated" in text else text


def decode_rgb(
    source: str | Path | IO[bytes], name: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Open ``source`` (a path or a file object; ``name`` goes in messages), first frame if
    animated, apply EXIF orientation, return RGB.

    Raises ImageError with the one-line wording shared by uploads, folders, the CLI and
    training for unreadable, empty, truncated or oversized files; the size check happens
    before any pixel is decoded (our limit, or Pillow's own bomb limit if lower)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check below
            img = Image.open(source)
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise too_large(name, w * h, max_pixels)
            img.seek(0)
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Image.DecompressionBombError as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
        raise too_large(name, int(pixels.group(1)) if pixels else 0, limit) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        reason = "the file is empty" if _is_empty(source) else _reason(e)
        raise ImageError(f"{name}: cannot read image ({reason})") from None


def _is_empty(source: str | Path | IO[bytes]) -> bool:
    if isinstance(source, (str, Path)):
        return Path(source).is_file() and Path(source).stat().st_size == 0
    return source.seek(0, 2) == 0


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file -> RGB (see :func:`decode_rgb`)."""
    return decode_rgb(Path(path), str(path), max_pixels)


def find_images(root: str | Path) -> list[Path]:
    """Image files under a folder (recursive, sorted) or listed in a .txt file (one per line,
    relative paths resolved against the list's folder)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in root.read_text().splitlines()]
        return [(root.parent / ln) for ln in lines if ln and not ln.startswith("#")]
    if not root.is_dir():
        raise FileNotFoundError(f"data path {root} is neither a folder nor a .txt file list")
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def sample_photos() -> dict[str, Image.Image]:
    """The colour photos shipped with scikit-image and scikit-learn (no network needed)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
    ]
    photos = {n: Image.fromarray(getattr(sd, n)()) for n in names}
    sk = load_sample_images()
    for fname, arr in zip(sk.filenames, sk.images, strict=True):
        photos[Path(fname).stem] = Image.fromarray(arr)
    return photos


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> normalised for the model (as v2.Normalize(MEAN, STD))."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) grey levels."""
    return (LUMA[0] * x[:, 0] + LUMA[1] * x[:, 1] + LUMA[2] * x[:, 2]).unsqueeze(1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised -> the same images in grey (luma in all three channels),
    normalised. Grey images are left as they are."""
    return normalise(luma(denormalise(x)).expand(-1, 3, -1, -1)).to(x.dtype)


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) normalised -> [0, 1]."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 1)


def cell_texture(cells: torch.Tensor) -> torch.Tensor:
    """Colour-blind texture statistics of each cell: the 2-D FFT magnitude of its grey levels
    less their mean (no brightness, no position within the cell) and a magnitude-weighted
    histogram of 8 gradient orientations, each scaled to unit size (no contrast).
    cells: (N, 3, p, p) normalised pixels -> (N, texture_dim(p))."""
    grey = cells.mean(1)
    z = grey - grey.mean((1, 2), keepdim=True)
    spectrum = torch.fft.rfft2(z).abs().flatten(1)
    gy, gx = torch.gradient(z, dim=(1, 2))
    # sign-free orientations, binned with axes and diagonals at bin centres, not on the edges
    bins = (torch.atan2(gy, gx) % torch.pi / torch.pi * 8 + 0.5).long() % 8
    hist = z.new_zeros(len(z), 8).scatter_add_(1, bins.flatten(1), torch.hypot(gx, gy).flatten(1))
    return torch.cat(
        [
            spectrum / spectrum.norm(dim=1, keepdim=True).clamp_min(1e-6),
            hist / hist.sum(1, keepdim=True).clamp_min(1e-6),
        ],
        1,
    )


def neighbourhood_mean(f: torch.Tensor, grid: tuple[int, int], window: int = 3) -> torch.Tensor:
    """Each cell's features averaged over the ``window`` x ``window`` cells around it (edges
    replicated; odd ``window``, 1 = the cell alone).
    f: (B, h * w, D) in row-major order of ``grid`` -> (B, h * w, D)."""
    (h, w), (b, _, d), r = grid, f.shape, window // 2
    x = F.pad(f.transpose(1, 2).reshape(b, d, h, w), (r, r, r, r), mode="replicate")
    return F.avg_pool2d(x, window, stride=1).reshape(b, d, h * w).transpose(1, 2)


def texture_dim(patch: int) -> int:
    """Length of ``cell_texture``'s features for ``patch`` x ``patch`` cells."""
    return patch * (patch // 2 + 1) + 8


def texture_map(x: torch.Tensor, patch: int, window: int = 3) -> torch.Tensor:
    """``cell_texture`` of every patch cell, averaged over its ``window`` x ``window``
    neighbourhood.
    x: (B, 3, H, W) -> (B, H/p * W/p, texture_dim(p)), cells in row-major order."""
    b, c, hh, ww = x.shape
    h, w = hh // patch, ww // patch
    cells = x.float().reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
    f = cell_texture(cells.reshape(-1, c, patch, patch)).reshape(b, h * w, -1)
    return neighbourhood_mean(f, (h, w), window)
