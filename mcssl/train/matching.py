"""Cross-view patch matching (``shortcut.cross_view``; Leopart, PixPro, VADeR): each student
token of one global crop predicts the teacher's concept distribution at the same image location
in the other crop, found from the two crop boxes.

A box is ``(y0, x0, y1, x1, flip)`` in fractions of the source image (flip = 1 when the crop
was mirrored left-right). Locations are fractions too, so image and crop sizes do not matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF


def crop_with_box(
    img: Image.Image, size: int, scale: tuple[float, float]
) -> tuple[Image.Image, torch.Tensor]:
    """Random resized crop + horizontal flip (torch's global RNG, as ``sit_augment``'s) ->
    (the ``size`` x ``size`` crop, its box (5,))."""
    top, left, h, w = RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
    out = TF.resized_crop(img, top, left, h, w, [size, size], TF.InterpolationMode.BICUBIC)
    flip = bool(torch.rand(1) < 0.5)
    if flip:
        out = TF.hflip(out)
    W, H = img.size
    box = torch.tensor([top / H, left / W, (top + h) / H, (left + w) / W, float(flip)])
    return out, box


def token_centres(grid: int) -> torch.Tensor:
    """Centres of a grid x grid token layout, row-major, as (y, x) fractions -> (N, 2)."""
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=1)


def view_to_image(p: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """p: (..., N, 2) fractions of the crop; box: (..., 5) -> fractions of the source image."""
    y0, x0, y1, x1, flip = (box[..., i, None] for i in range(5))
    x = torch.where(flip > 0.5, 1 - p[..., 1], p[..., 1])
    return torch.stack([y0 + p[..., 0] * (y1 - y0), x0 + x * (x1 - x0)], dim=-1)


def image_to_view(q: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The inverse of ``view_to_image``."""
    y0, x0, y1, x1, flip = (box[..., i, None] for i in range(5))
    y, x = (q[..., 0] - y0) / (y1 - y0), (q[..., 1] - x0) / (x1 - x0)
    return torch.stack([y, torch.where(flip > 0.5, 1 - x, x)], dim=-1)


def correspondence(
    box_a: torch.Tensor, box_b: torch.Tensor, grid: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token centre of crop a lies in crop b. box_a, box_b: (B, 5) ->
    locations (B, N, 2) as (y, x) fractions of crop b, valid (B, N) bool (inside crop b)."""
    centres = token_centres(grid).to(box_a.device).expand(box_a.shape[0], -1, -1)
    loc = image_to_view(view_to_image(centres, box_a), box_b)
    valid = ((loc >= 0) & (loc <= 1)).all(-1)
    return loc, valid


def sample_at(maps: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of per-token values at fractional locations (RoI-align with one
    sample per output cell). maps: (B, N, K) on a square grid; loc: (B, M, 2) -> (B, M, K)."""
    b, n, k = maps.shape
    g = int(round(n**0.5))
    img = maps.transpose(1, 2).reshape(b, k, g, g)
    xy = loc.flip(-1) * 2 - 1  # grid_sample wants (x, y) in [-1, 1]
    out = F.grid_sample(
        img, xy[:, :, None], mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[..., 0].transpose(1, 2)  # (B, M, K)


def cross_view_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    boxes: list[torch.Tensor],
    student_temp: float,
) -> torch.Tensor:
    """Each student token of crop a against the teacher's targets at its image location in
    crop b, for the ordered pairs of the two first global crops, averaged over the tokens that
    lie in both. student_logits, teacher_probs: (G*B, N, K), views first; boxes: G x (B, 5)."""
    b = boxes[0].shape[0]
    g = int(round(student_logits.shape[1] ** 0.5))
    s, t = student_logits.float().split(b), teacher_probs.split(b)
    terms = []
    for a, o in ((0, 1), (1, 0)):
        loc, valid = correspondence(boxes[a], boxes[o], g)
        target = sample_at(t[o], loc.clamp(0, 1))
        ce = -(target * F.log_softmax(s[a] / student_temp, dim=-1)).sum(-1)  # (B, N)
        terms.append((ce * valid).sum() / valid.sum().clamp_min(1))
    return torch.stack(terms).mean()


@torch.no_grad()
def cross_image_targets(
    teacher_probs: torch.Tensor, features: torch.Tensor, sources: int, centred: bool = False
) -> torch.Tensor:
    """``shortcut.cross_image`` (CrIBo, NeCo, Hummingbird: positives from other images): each
    token's target becomes the teacher's target at its nearest token, by cosine of the
    teacher's features, in *another* image of the batch, so a token cannot be rewarded for
    what only its own image has. Views come first: row i is a crop of source image
    ``i % sources``, and crops of one source never pair. ``centred`` subtracts each crop's
    mean token first: what all of an image's tokens share (its colour cast, its lighting)
    then cannot pick the neighbour's image. teacher_probs: (V*B, N, K), features:
    (V*B, N, D), sources = B -> (V*B, N, K)."""
    b, n, k = teacher_probs.shape
    f = features.detach().float()
    if centred:
        f = f - f.mean(1, keepdim=True)
    f = F.normalize(f.reshape(b * n, -1), dim=-1)
    image = (torch.arange(b, device=f.device) % sources).repeat_interleave(n)
    nearest = torch.empty(b * n, dtype=torch.long, device=f.device)
    for rows in torch.arange(b * n, device=f.device).split(4096):  # (4096, B*N) at a time
        sim = f[rows] @ f.T
        sim.masked_fill_(image[rows, None] == image[None, :], float("-inf"))
        nearest[rows] = sim.argmax(1)
    return teacher_probs.reshape(b * n, k)[nearest].reshape(b, n, k)
