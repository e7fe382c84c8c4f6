"""The SiT / DINO view augmentations, batched on the training device.

The same recipe as ``mcssl.train.data.sit_augment`` (random resized crop, flip, colour jitter 0.4 /
0.4 / 0.2 / 0.1 with p 0.8, greyscale p 0.2, Gaussian blur p 0.5 with sigma in [0.1, 2], or
per-view blur and solarisation probabilities as the reference's asymmetric views), but
on uint8 image tensors already on the device, a whole batch per call, so that CPU workers only
have to read (or decode) images. Random parameters are drawn on the CPU from a seeded
generator: the same seed gives the same views on any device.

Differences from the per-image PIL path, by design: crops are resampled by ``roi_align``
(bilinear with adaptive box averaging, which anti-aliases like a box filter) instead of
bicubic; the order of the four jitter operations is drawn once per batch instead of per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from mcssl.images import grey, luma, normalise

JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
P_JITTER, P_GREY, P_BLUR, P_FLIP = 0.8, 0.2, 0.5, 0.5  # P_BLUR: unless given per view


def crop_boxes(
    hw: torch.Tensor, scale: tuple[float, float], gen: torch.Generator, tries: int = 10
) -> torch.Tensor:
    """Random-resized-crop boxes as torchvision samples them: an area fraction in ``scale``
    and a log-uniform aspect ratio in [3/4, 4/3], the first of ``tries`` that fits, else the
    central crop of the clamped ratio.

    hw: (N, 2) image heights and widths -> (N, 4) boxes x0, y0, x1, y1 in pixels."""
    n = hw.shape[0]
    h, w = hw[:, :1].double(), hw[:, 1:].double()
    area = h * w * torch.empty(n, tries, dtype=torch.float64).uniform_(*scale, generator=gen)
    logr = torch.empty(n, tries, dtype=torch.float64).uniform_(
        math.log(3 / 4), math.log(4 / 3), generator=gen
    )
    cw = torch.sqrt(area * logr.exp()).round()
    ch = torch.sqrt(area / logr.exp()).round()
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.double().argmax(1), -1)
    idx = first.clamp_min(0)[:, None]
    cw, ch = cw.gather(1, idx)[:, 0], ch.gather(1, idx)[:, 0]
    u = torch.rand(n, 2, dtype=torch.float64, generator=gen)
    x0 = torch.floor(u[:, 0] * (w[:, 0] - cw + 1))
    y0 = torch.floor(u[:, 1] * (h[:, 0] - ch + 1))
    # fallback: the whole image, cut to the nearest allowed aspect ratio, centred
    ratio = (w / h)[:, 0]
    fw = torch.where(ratio > 4 / 3, torch.round(h[:, 0] * 4 / 3), w[:, 0])
    fh = torch.where(ratio < 3 / 4, torch.round(w[:, 0] * 4 / 3), h[:, 0])
    miss = first < 0
    cw, ch = torch.where(miss, fw, cw), torch.where(miss, fh, ch)
    x0 = torch.where(miss, torch.floor((w[:, 0] - fw) / 2), x0)
    y0 = torch.where(miss, torch.floor((h[:, 0] - fh) / 2), y0)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], 1).float()


def resized_crops(
    images: torch.Tensor | list[torch.Tensor], boxes: torch.Tensor, size: int
) -> torch.Tensor:
    """Crops ``boxes[i]`` of image ``i % n`` (n = number of images) resampled to size x size.

    images: (n, 3, H, W) uint8, or a list of n (3, Hi, Wi) uint8 of different sizes;
    boxes: (V * n, 4) view-major -> (V * n, 3, size, size) float in [0, 1]."""
    n, m, dev = len(images), boxes.shape[0], boxes.device
    if isinstance(images, torch.Tensor):
        owner = torch.arange(m, device=dev) % n
        rois = torch.cat([owner[:, None].to(boxes), boxes], 1)
        return roi_align(images.float() / 255, rois, size, 1.0, -1, aligned=True)
    out = torch.empty(m, 3, size, size, device=dev)
    for i, img in enumerate(images):  # one call per image: all of its views at once
        sel = torch.arange(i, m, n, device=dev)  # its rows (view-major), no device sync
        rois = torch.cat([torch.zeros(len(sel), 1, device=dev), boxes[sel]], 1)
        out[sel] = roi_align(img[None].float() / 255, rois, size, 1.0, -1, aligned=True)
    return out


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f * a + (1 - f) * b, clamped to [0, 1], with a per-image factor f (N,)."""
    return torch.lerp(b.expand_as(a), a, f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotates the hue of each image by ``shift`` (N,) turns, through HSV.

    x: (N, 3, H, W) in [0, 1] -> the same shape."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    delta = v - x.min(1)[0]
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (v - r) / d, (v - g) / d, (v - b) / d
    h = torch.where(v == r, bc - gc, torch.where(v == g, 2 + rc - bc, 4 + gc - rc))
    h = torch.remainder(h / 6 + shift.view(-1, 1, 1), 1.0) * 6  # in sectors [0, 6)
    # HSV -> RGB in closed form: channel n in (5, 3, 1) for (r, g, b)
    out = [v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
           for k in (torch.remainder(n + h, 6) for n in (5, 3, 1))]  # fmt: skip
    return torch.stack(out, 1)


def colour_jitter(x: torch.Tensor, apply: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with factors drawn per image, in an order
    drawn per batch; only where ``apply`` (N,) bool."""
    n = x.shape[0]
    bri, con, sat, hue = JITTER
    u = torch.rand(4, n, generator=gen)
    factors = [1 - bri + 2 * bri * u[0], 1 - con + 2 * con * u[1], 1 - sat + 2 * sat * u[2]]
    shift = -hue + 2 * hue * u[3]
    keep = ~apply.to(x.device)
    factors = [torch.where(keep, 1.0, f.to(x.device)) for f in factors]
    shift = torch.where(keep, 0.0, shift.to(x.device))
    for op in torch.randperm(4, generator=gen).tolist():
        if op == 0:
            x = (x * factors[0].view(-1, 1, 1, 1)).clamp_(0, 1)
        elif op == 1:
            x = _blend(x, luma(x).mean((2, 3), keepdim=True), factors[1])
        elif op == 2:
            x = _blend(x, luma(x), factors[2])
        else:
            x = adjust_hue(x, shift)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (N,), kernel k (odd), reflect padding."""
    n, c, h, w = x.shape
    r = torch.arange(k, dtype=torch.float32) - k // 2
    kern = torch.exp(-0.5 * (r[None] / sigma[:, None].float()) ** 2)
    kern = (kern / kern.sum(1, keepdim=True)).to(x.device).repeat_interleave(c, 0)
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, kern.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, kern.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


def solarize(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """PIL's solarisation (values >= 128/255 inverted) where ``apply`` (N,) bool.

    x: (N, 3, H, W) in [0, 1] -> the same shape."""
    hit = apply.to(x.device).view(-1, 1, 1, 1) & (x >= 128 / 255)
    return torch.where(hit, 1 - x, x)


def augment_views(
    images: torch.Tensor | list[torch.Tensor],
    views: int,
    size: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    blur: Sequence[float] = (),
    solarise: Sequence[float] = (),
) -> list[torch.Tensor]:
    """``views`` augmented views of every image, normalised for the model. ``blur`` and
    ``solarise``: the probability for each view (default: blur 0.5, no solarisation).

    images: (B, 3, H, W) uint8 or a list of B (3, Hi, Wi) uint8, on the device
    -> ``views`` tensors (B, 3, size, size) float."""
    b = len(images)
    if not views or not b:
        return []
    dev = images[0].device
    if isinstance(images, torch.Tensor):
        hw = torch.tensor([images.shape[2:]] * b)
    else:
        hw = torch.tensor([im.shape[1:] for im in images])
    boxes = crop_boxes(hw.repeat(views, 1), scale, gen)
    x = resized_crops(images, boxes.to(dev), size)
    n = x.shape[0]
    u = torch.rand(4, n, generator=gen)
    flip = (u[0] < P_FLIP).to(dev)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = colour_jitter(x, u[1] < P_JITTER, gen)
    greyed = (u[2] < P_GREY).to(dev)
    x = torch.where(greyed.view(-1, 1, 1, 1), luma(x).expand_as(x), x)
    k = max(3, int(0.1 * size) // 2 * 2 + 1)
    sigma = torch.empty(n).uniform_(0.1, 2.0, generator=gen)
    p_blur = torch.tensor(list(blur) or [P_BLUR] * views).repeat_interleave(b)
    blurred = (u[3] < p_blur).to(dev)
    x = torch.where(blurred.view(-1, 1, 1, 1), gaussian_blur(x, sigma, k), x)
    if any(p > 0 for p in solarise):  # only then: the default draws no more numbers
        p_sol = torch.tensor(list(solarise)).repeat_interleave(b)
        x = solarize(x, torch.rand(n, generator=gen) < p_sol)
    return list(normalise(x).split(b))


def mosaic(x: torch.Tensor) -> torch.Tensor:
    """``shortcut.mosaic``: quadrant q (row-major) of input i is quadrant q of input
    (i + q) mod B, so each input shows four images, each at its own place, and no image-wide
    cue (colour cast, lighting) is shared by all of an input's tokens. x: (B, C, H, W) -> same."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    out = x.clone()
    for q, (rows, cols) in enumerate(
        [
            (slice(0, h), slice(0, w)),
            (slice(0, h), slice(w, None)),
            (slice(h, None), slice(0, w)),
            (slice(h, None), slice(w, None)),
        ]
    ):
        out[..., rows, cols] = x.roll(-q, 0)[..., rows, cols]
    return out


def grey_inputs(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """``shortcut.teacher_grey``: the inputs where ``apply`` (B,) bool, in grey (luma in all three
    channels). x: (B, 3, H, W) normalised -> the same, normalised."""
    return torch.where(apply.view(-1, 1, 1, 1), grey(x), x)
