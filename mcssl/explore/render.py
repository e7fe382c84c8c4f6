"""Drawing concept maps: palette, overlays, legends, token boxes and crops, figure strips.

Pillow + numpy only. Label maps are (H, W) integer arrays at image resolution (see
:func:`mcssl.explore.concepts.upsample_labels`); Pillow sizes are (W, H), numpy shapes (H, W).
Every function returns a new image and leaves its input untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies), ordered so
# that k = 2 gives blue / yellow as in the paper's figures; grey last for a 9th cluster.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),  # blue
    (240, 228, 66),  # yellow
    (213, 94, 0),  # vermillion
    (0, 158, 115),  # bluish green
    (204, 121, 167),  # reddish purple
    (86, 180, 233),  # sky blue
    (230, 159, 0),  # orange
    (0, 0, 0),  # black
    (153, 153, 153),  # grey
)
_PALETTE_ARRAY = np.array(PALETTE, dtype=np.uint8)
BOUNDARY_COLOUR = (255, 255, 255)
BOX_COLOUR = (255, 0, 0)
Colour = tuple[int, int, int]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font (no font files); scalable where Pillow has FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old Pillow or no FreeType: bitmap font
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return int(np.ceil(x1 - min(x0, 0))), int(np.ceil(y1 - min(y0, 0)))


def _labels2d(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) map, got shape {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be non-negative, got {lab.min()}")
    return lab


def _rgb(image: Image.Image) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


def colourise(labels: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 colours from :data:`PALETTE` (ids beyond the
    palette wrap around; k-means here has k <= K_MAX = 9 so they never do)."""
    lab = _labels2d(labels)
    return _PALETTE_ARRAY[lab % len(PALETTE)]


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool, True on pixels whose right or lower neighbour has another label: a
    one-pixel line along every cluster boundary."""
    lab = _labels2d(labels)
    mask = np.zeros(lab.shape, dtype=bool)
    mask[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    mask[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return mask


def overlay(
    image: Image.Image,
    labels: np.ndarray,
    alpha: float = 0.5,
    boundaries: bool = True,
    boundary_colour: Colour = BOUNDARY_COLOUR,
    highlight: int | None = None,
) -> Image.Image:
    """Alpha-blend the colourised label map over ``image``: (1 - alpha) * image + alpha *
    colours, rounded. ``labels`` must be (H, W) at the image's resolution. ``boundaries`` draws
    one-pixel cluster boundaries in ``boundary_colour`` on top. ``highlight``: that cluster is
    blended at max(alpha, 0.7), the others at alpha / 4 over a darkened image."""
    img = _rgb(image)
    lab = _labels2d(labels)
    if lab.shape != (img.height, img.width):
        raise ValueError(
            f"labels {lab.shape} do not match the image (H, W) = {(img.height, img.width)}"
        )
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = np.asarray(img, dtype=np.float32)
    colours = colourise(lab).astype(np.float32)
    a: float | np.ndarray = alpha
    if highlight is not None:
        picked = (lab == highlight)[..., None]
        a = np.where(picked, max(alpha, 0.7), alpha / 4)
        base = np.where(picked, base, base * 0.6)
    out = np.rint((1.0 - a) * base + a * colours).clip(0, 255).astype(np.uint8)
    if boundaries:
        out[boundary_mask(lab)] = boundary_colour
    return Image.fromarray(out, "RGB")


def legend(
    k: int,
    names: Sequence[str] | None = None,
    swatch: int = 14,
    font_size: int = 12,
    background: Colour = (255, 255, 255),
) -> Image.Image:
    """A one-row strip of ``k`` colour swatches, each followed by its name (default
    "0", "1", ...)."""
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    names = [str(i) for i in range(k)] if names is None else [str(n) for n in names]
    if len(names) != k:
        raise ValueError(f"{len(names)} names for {k} clusters")
    font, pad = _font(font_size), 4
    sizes = [_text_size(font, n) for n in names]
    height = max([swatch] + [h for _, h in sizes]) + 2 * pad
    width = pad + sum(swatch + pad + w + 2 * pad for w, _ in sizes)
    img = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(img)
    x = pad
    for i, (name, (w, h)) in enumerate(zip(names, sizes, strict=True)):
        y = (height - swatch) // 2
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=PALETTE[i % len(PALETTE)])
        draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], outline=(96, 96, 96))
        x += swatch + pad
        draw.text((x, (height - h) // 2), name, fill=(0, 0, 0), font=font)
        x += w + 2 * pad
    return img


def token_box(
    row: int, col: int, patch_px_h: float, patch_px_w: float
) -> tuple[int, int, int, int]:
    """Pixel box (top, left, bottom, right), end-exclusive, of token (row, col) when one
    token covers ``patch_px_h`` x ``patch_px_w`` pixels (may be fractional)."""
    if patch_px_h <= 0 or patch_px_w <= 0:
        raise ValueError(f"token pixel size must be positive, got {patch_px_h} x {patch_px_w}")
    if row < 0 or col < 0:
        raise ValueError(f"token ({row}, {col}) has a negative index")
    top, left = round(row * patch_px_h), round(col * patch_px_w)
    bottom, right = round((row + 1) * patch_px_h), round((col + 1) * patch_px_w)
    return top, left, max(bottom, top + 1), max(right, left + 1)


def _outline_mask(shape: tuple[int, int], box: tuple[int, int, int, int], width: int) -> np.ndarray:
    top, left, bottom, right = box
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    mask[top + width : bottom - width, left + width : right - width] = False
    return mask


def draw_token_box(
    image: Image.Image,
    row: int,
    col: int,
    patch_px_h: float,
    patch_px_w: float,
    colour: Colour = BOX_COLOUR,
    width: int = 2,
) -> Image.Image:
    """Copy of ``image`` with a ``width``-pixel outline drawn inside the pixels of token
    (row, col); the caller gives the pixel size of one token at the shown resolution (the
    model may have seen another resolution). Parts outside the image are clipped."""
    img = _rgb(image)
    width = int(width)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    box = token_box(row, col, patch_px_h, patch_px_w)
    if box[0] >= img.height or box[1] >= img.width:
        raise ValueError(f"token ({row}, {col}) lies outside the {img.width}x{img.height} image")
    arr = np.array(img)
    arr[_outline_mask(arr.shape[:2], box, width)] = colour
    return Image.fromarray(arr, "RGB")


def token_crop(
    image: Image.Image,
    row: int,
    col: int,
    token_h: float,
    token_w: float,
    context: int = 1,
    size: int = 96,
    colour: Colour = BOX_COLOUR,
    width: int = 2,
    fill: Colour = (128, 128, 128),
) -> Image.Image:
    """``size`` x ``size`` view of token (row, col) with ``context`` tokens of margin on every
    side, the token boxed. Margins beyond the image are padded with ``fill`` so the token stays
    centred; non-square tokens are stretched to a square (the model's view)."""
    img = _rgb(image)
    context, size = int(context), int(size)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    top, left, bottom, right = token_box(row, col, token_h, token_w)
    if top >= img.height or left >= img.width:
        raise ValueError(f"token ({row}, {col}) lies outside the {img.width}x{img.height} image")
    y0, x0 = round((row - context) * token_h), round((col - context) * token_w)
    y1, x1 = round((row + 1 + context) * token_h), round((col + 1 + context) * token_w)
    region = Image.new("RGB", (x1 - x0, y1 - y0), fill)
    src = img.crop((max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height)))
    region.paste(src, (max(x0, 0) - x0, max(y0, 0) - y0))
    out = region.resize((size, size), Image.Resampling.BICUBIC)
    span = 2 * context + 1  # tokens across the crop
    cell = size / span
    return draw_token_box(out, context, context, cell, cell, colour, min(width, max(1, size // 8)))


def side_by_side(
    images: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    height: int = 224,
    gap: int = 4,
    font_size: int = 14,
    background: Colour = (255, 255, 255),
) -> Image.Image:
    """Figure-1-style strip: ``images`` resized to ``height`` (aspect kept), left to right,
    ``gap`` pixels apart, each with its caption centred underneath."""
    if len(images) == 0:
        raise ValueError("no images to lay out")
    height, gap = int(height), int(gap)
    if height < 1 or gap < 0:
        raise ValueError(f"height must be >= 1 and gap >= 0, got {height}, {gap}")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    tiles = []
    for im in images:
        im = _rgb(im)
        w = max(1, round(im.width * height / im.height))
        if im.size != (w, height):
            im = im.resize((w, height), Image.Resampling.BICUBIC)
        tiles.append(im)
    font = _font(font_size)
    cap_h = 0
    if captions is not None:
        cap_h = max(_text_size(font, str(c))[1] for c in captions) + 2 * gap + 2
    width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    canvas = Image.new("RGB", (width, height + cap_h), background)
    draw = ImageDraw.Draw(canvas)
    x = 0
    for i, t in enumerate(tiles):
        canvas.paste(t, (x, 0))
        if captions is not None:
            text = str(captions[i])
            tw, _ = _text_size(font, text)
            draw.text((x + (t.width - tw) // 2, height + gap), text, fill=(0, 0, 0), font=font)
        x += t.width + gap
    return canvas


# dark blue -> teal -> yellow (a viridis-like ramp: ordered in lightness, colour-blind safe)
_RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)])


def heatmap(image: Image.Image, values: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """``values`` (gh, gw) on a token grid -> coloured (low = dark blue, high = yellow), scaled
    from their min to their max, upsampled (nearest) to the image and blended over it."""
    img = _rgb(image)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or not np.isfinite(v).all():
        raise ValueError(f"values must be a finite 2-D grid, got shape {v.shape}")
    span = v.max() - v.min()
    t = (v - v.min()) / span if span > 0 else np.zeros_like(v)
    pos = t * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    rgb = (1 - frac) * _RAMP[lo] + frac * _RAMP[lo + 1]
    grid = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    colours = np.asarray(grid.resize(img.size, Image.Resampling.NEAREST), np.float32)
    out = (1 - alpha) * np.asarray(img, np.float32) + alpha * colours
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")


def ramp(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 on the heat-map ramp (0 = dark blue, 1 = yellow)."""
    pos = np.clip(np.asarray(t, dtype=np.float64), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return ((1 - frac) * _RAMP[lo] + frac * _RAMP[lo + 1]).round().astype(np.uint8)


def colour_scale(lo: float, hi: float, width: int = 448, bar: int = 14) -> Image.Image:
    """The heat-map's key: a ``width``-pixel gradient strip from ``lo`` (left) to ``hi``
    (right), the two values and the middle one written under it."""
    font = _font(12)
    strip = np.repeat(ramp(np.linspace(0, 1, width))[None], bar, axis=0)
    _, th = _text_size(font, "0")
    canvas = Image.new("RGB", (width, bar + th + 6), (255, 255, 255))
    canvas.paste(Image.fromarray(strip, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for frac, value in ((0.0, lo), (0.5, (lo + hi) / 2), (1.0, hi)):
        text = f"{value:.2f}"
        tw, _ = _text_size(font, text)
        x = int(frac * width - frac * tw)
        draw.text((x, bar + 3), text, fill=(0, 0, 0), font=font)
    return canvas


def id_colours(ids: np.ndarray) -> np.ndarray:
    """Integer ids (any shape, e.g. argmax pseudo-concepts out of thousands) -> RGB uint8 of
    shape ids.shape + (3,): a fixed colour per id (golden-ratio hues), the same everywhere."""
    ids = np.asarray(ids)
    hue = (ids.astype(np.float64) * 0.618033988749895) % 1.0
    sat = 0.55 + 0.35 * ((ids * 7) % 3) / 2  # vary saturation/value a little to part neighbours
    val = 0.75 + 0.2 * ((ids * 5) % 2)
    h6 = hue * 6
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.zeros(ids.shape + (3,))
    for j, (r, g, b) in enumerate(table):
        sel = i == j
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], -1)
    return (rgb * 255).round().astype(np.uint8)
