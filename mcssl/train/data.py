"""Unlabelled images -> augmented views, with a resumable distributed sampler.

Every sample's augmentation is seeded by (seed, epoch, index), so a run gives the same
batches whatever the number of workers and wherever it was resumed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from mcssl.config import Config
from mcssl.images import MEAN, STD, ImageError
from mcssl.train.matching import crop_with_box
from mcssl.train.sources import CachedImage, DataError, load_item, resolve_items

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 50


def sit_augment(
    size: int,
    scale: tuple[float, float],
    blur: float = 0.5,
    solarize: float = 0.0,
    hue: float = 0.1,
) -> v2.Compose:
    """SiT / DINO-style view: random resized crop, flip, colour jitter (hue within ``hue``
    turns), greyscale, blur with probability ``blur``, solarisation (PIL's, threshold 128)
    with probability ``solarize``."""
    k = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd blur kernel, ~10% of the crop
    steps = [
        v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, hue)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=blur),
    ]
    if solarize > 0:  # only then: an unused step would still draw a random number
        steps.append(v2.RandomSolarize(128, p=solarize))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(steps)


def per_view(values: list[float], n: int) -> list[float]:
    """A per-view setting for ``n`` views: the i-th value, the last one repeating."""
    return [values[min(i, len(values) - 1)] for i in range(n)]


def split_augment(
    size: int,
    scale: tuple[float, float],
    blur: float = 0.5,
    solarize: float = 0.0,
    hue: float = 0.1,
) -> tuple[v2.Compose, v2.Compose]:
    """``sit_augment`` cut in two: (geometry: crop + flip, colour: jitter, greyscale, blur and
    normalisation), so that two views can share a crop and differ in colour
    (``shortcut.student_colour``)."""
    full = sit_augment(size, scale, blur, solarize, hue).transforms
    return v2.Compose(full[:2]), v2.Compose(full[2:])


class UnlabelledImages(Dataset):
    """Indexed by ``(epoch, i)``; returns global views, local views and a failure count.

    Unreadable images are skipped (the next one is used instead) and counted, not fatal."""

    def __init__(self, items: list[Path | Image.Image], cfg: Config, seed: int) -> None:
        self.items = items
        self.repeat = cfg.data.repeat
        self.n_global, self.n_local = cfg.data.global_crops, cfg.data.local_crops
        d, n = cfg.data, cfg.data.global_crops
        blur, sol = per_view(d.global_blur, n), per_view(d.global_solarize, n)
        self.global_augs = [  # one per view: the views may differ (the reference's do)
            sit_augment(cfg.model.img_size, tuple(d.global_scale), blur[v], sol[v])
            for v in range(n)
        ]
        self.local_aug = sit_augment(d.local_size, tuple(d.local_scale), d.local_blur)
        self.max_pixels = cfg.data.max_image_pixels
        self.student_colour, self.cross_view = cfg.shortcut.student_colour, cfg.shortcut.cross_view
        self.img_size, self.global_scale = cfg.model.img_size, tuple(cfg.data.global_scale)
        self.split_augs = [  # per view, as global_augs
            split_augment(cfg.model.img_size, tuple(d.global_scale), blur[v], sol[v])
            for v in range(n)
        ]
        hue = cfg.shortcut.student_hue or 0.1  # 0: the student's jitter is the teacher's
        self.student_colours = [
            split_augment(cfg.model.img_size, tuple(d.global_scale), blur[v], sol[v], hue)[1]
            for v in range(n)
        ]
        self.seed = seed
        self.warned: set[int] = set()  # per worker: say once which file is unreadable

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def _load(self, i: int) -> Image.Image:
        return load_item(self.items[i % len(self.items)], self.max_pixels)

    def _first_readable(self, i: int, load: Callable[[int], object]) -> tuple[object, int]:
        """load(i), or of the next readable item; -> (what it returned, items skipped)."""
        failed = 0
        while True:
            try:
                return load(i + failed), failed
            except ImageError as e:
                if (i + failed) % len(self.items) not in self.warned:
                    self.warned.add((i + failed) % len(self.items))
                    log.warning("skipping unreadable image: %s", e)
                failed += 1
                if failed >= min(MAX_CONSECUTIVE_FAILURES, len(self.items)):
                    raise DataError(f"{failed} unreadable images in a row ({e})") from None

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, i = key
        img, failed = self._first_readable(i, self._load)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, i)) & 0x7FFF_FFFF_FFFF)
            if self.student_colour or self.cross_view:
                views_g, views_s, boxes = self._paired_views(img)
            else:
                views_g, views_s, boxes = [aug(img) for aug in self.global_augs], [], []
            views_l = [self.local_aug(img) for _ in range(self.n_local)]
        return {
            "global": views_g,
            "local": views_l,
            "student": views_s,
            "boxes": boxes,
            "failed": failed,
        }

    def _paired_views(self, img: Image.Image) -> tuple[list, list, list]:
        """-> teacher views, student views (``shortcut.student_colour``: pairwise the same crop,
        each its own colours; else none), crop boxes (``shortcut.cross_view``; else none)."""
        crops, boxes = [], []
        for geometry, _ in self.split_augs:
            if self.cross_view:
                crop, box = crop_with_box(img, self.img_size, self.global_scale)
                boxes.append(box)
            else:
                crop = geometry(img)
            crops.append(crop)
        colours = [colour for _, colour in self.split_augs]
        teacher = [c(x) for c, x in zip(colours, crops, strict=True)]
        student = (
            [c(x) for c, x in zip(self.student_colours, crops, strict=True)]
            if self.student_colour
            else []
        )
        return teacher, student, boxes


class RawImages(UnlabelledImages):
    """The device pipeline's dataset: workers only read images, the augmentations run batched
    on the training device (``DeviceViews``). An item is a uint8 (3, H, W) tensor, or with
    ``jpeg_bytes`` the raw bytes (1-D uint8) of a plain JPEG, to be decoded by nvjpeg."""

    def __init__(self, items: list, cfg: Config, seed: int, jpeg_bytes: bool) -> None:
        super().__init__(items, cfg, seed)
        self.jpeg_bytes = jpeg_bytes

    def _load_raw(self, i: int) -> torch.Tensor:
        item = self.items[i % len(self.items)]
        if isinstance(item, CachedImage):
            return torch.from_numpy(np.array(item.array())).permute(2, 0, 1)
        if self.jpeg_bytes and isinstance(item, Path) and _plain_jpeg(item, self.max_pixels):
            return torch.from_numpy(np.fromfile(item, dtype=np.uint8))
        return torch.from_numpy(np.array(self._load(i))).permute(2, 0, 1)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        img, failed = self._first_readable(key[1], self._load_raw)
        return {"image": img, "failed": failed}


def _plain_jpeg(path: Path, max_pixels: int) -> bool:
    """A JPEG that nvjpeg decodes as load_rgb would: RGB or grey, no EXIF rotation, not too
    big (read from the header only). Anything else goes through load_rgb in the worker."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            return (
                img.format == "JPEG"
                and img.mode in ("RGB", "L")
                and w * h <= max_pixels
                and img.getexif().get(0x0112, 1) == 1
            )
    except (OSError, ValueError, SyntaxError):
        return False


def raw_collate(samples: list[dict]) -> dict:
    """-> images: (B, 3, H, W) uint8 when all have one size, else a list; failed: int."""
    imgs = [s["image"] for s in samples]
    same = all(im.ndim == 3 and im.shape == imgs[0].shape for im in imgs)
    return {"images": torch.stack(imgs) if same else imgs,
            "failed": sum(s["failed"] for s in samples)}  # fmt: skip


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched nvjpeg decode; one bad file fails a batch, so then one by one (None: failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's decoders are marked deprecated
        try:
            return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for d in data:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


class DeviceViews:
    """Turns a RawImages batch into the training views on the device: decodes JPEG bytes
    there (nvjpeg on CUDA), then ``device_aug.augment_views``. Seeded by (seed, rank, step),
    so a resumed run gets the same views."""

    def __init__(self, cfg: Config, rank: int) -> None:
        self.cfg, self.rank = cfg, rank

    def __call__(self, batch: dict, step: int, device: torch.device) -> dict:
        from mcssl.train.device_aug import augment_views

        images, failed = batch["images"], batch["failed"]
        if isinstance(images, torch.Tensor):
            images = images.to(device, non_blocking=True)
        else:
            images, bad = self._to_device(images, device)
            failed += bad
        d, gen = self.cfg.data, torch.Generator()
        gen.manual_seed(hash((self.cfg.run.seed, self.rank, step)) & 0x7FFF_FFFF_FFFF)
        size, scale, n = self.cfg.model.img_size, tuple(d.global_scale), d.global_crops
        blur, sol = per_view(d.global_blur, n), per_view(d.global_solarize, n)
        local_blur = [d.local_blur] * d.local_crops
        return {
            "global": augment_views(images, n, size, scale, gen, blur, sol),
            "local": augment_views(
                images, d.local_crops, d.local_size, tuple(d.local_scale), gen, local_blur
            ),
            "failed": failed,
        }

    @staticmethod
    def _to_device(images: list[torch.Tensor], device: torch.device) -> tuple[list, int]:
        out = [im.to(device, non_blocking=True) if im.ndim == 3 else None for im in images]
        jpeg = [k for k, im in enumerate(images) if im.ndim == 1]
        if jpeg:
            for k, im in zip(jpeg, _decode_jpegs([images[k] for k in jpeg], device), strict=True):
                out[k] = im
        good = [im for im in out if im is not None]
        if not good:
            raise DataError("no image of a batch could be decoded")
        return [good[0] if im is None else im for im in out], len(out) - len(good)


def collate(samples: list[dict]) -> dict:
    """-> global: list of G tensors (B, 3, H, W); local: list of L tensors; student: G tensors
    (shortcut.student_colour) or none; boxes: G tensors (B, 5) (shortcut.cross_view) or none;
    failed: int."""
    return {
        "global": [torch.stack(v) for v in zip(*(s["global"] for s in samples), strict=True)],
        "local": [torch.stack(v) for v in zip(*(s["local"] for s in samples), strict=True)],
        "student": [torch.stack(v) for v in zip(*(s["student"] for s in samples), strict=True)],
        "boxes": [torch.stack(v) for v in zip(*(s["boxes"] for s in samples), strict=True)],
        "failed": sum(s["failed"] for s in samples),
    }


class ResumableDistributedSampler(Sampler):
    """Shuffles per epoch with (seed, epoch), splits across ranks (drops the remainder so
    every rank sees the same number of samples), and can start mid-epoch after a resume."""

    def __init__(self, n: int, rank: int, world: int, seed: int, batch_size: int) -> None:
        self.n, self.rank, self.world, self.seed = n, rank, world, seed
        self.per_rank = (n // world) // batch_size * batch_size  # full batches only
        self.batch_size = batch_size
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return self.per_rank - self.skip_batches * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[self.rank :: self.world][: self.per_rank]
        for i in perm[self.skip_batches * self.batch_size :].tolist():
            yield self.epoch, i


def plain_views(batch: dict, step: int, device: torch.device) -> dict:
    return batch  # the plain path's workers made the views already


@dataclass
class DataBundle:
    loader: DataLoader
    sampler: ResumableDistributedSampler
    steps_per_epoch: int
    description: str
    # (loader batch, step, device) -> {"global": [...], "local": [...], "failed": n}
    views: Callable[[dict, int, torch.device], dict] = plain_views


def build_data(cfg: Config, rank: int, world: int, cuda: bool) -> DataBundle:
    """The loader of ``cfg.data`` for this rank; on ``cuda`` with memory pinned, and with the
    device pipeline's JPEGs decoded by nvjpeg."""
    items, desc = resolve_items(cfg.data.path)
    device_path = cfg.data.pipeline == "device"
    if device_path:
        dataset: UnlabelledImages = RawImages(items, cfg, cfg.run.seed, jpeg_bytes=cuda)
    else:
        dataset = UnlabelledImages(items, cfg, cfg.run.seed)
    bs = cfg.optim.batch_size
    sampler = ResumableDistributedSampler(len(dataset), rank, world, cfg.run.seed, bs)
    steps = sampler.per_rank // bs
    if steps == 0:
        need = bs * world
        raise DataError(
            f"{len(dataset)} samples ({len(items)} images x repeat {cfg.data.repeat}) is fewer "
            f"than one batch of {need} (batch_size x processes); lower optim.batch_size or "
            f"raise data.repeat"
        )
    loader = DataLoader(
        dataset,
        batch_size=bs,
        sampler=sampler,
        num_workers=cfg.data.workers,
        collate_fn=raw_collate if device_path else collate,
        pin_memory=cuda,
        drop_last=True,
        persistent_workers=cfg.data.workers > 0,
        prefetch_factor=4 if cfg.data.workers else None,
    )
    views = DeviceViews(cfg, rank) if device_path else plain_views
    return DataBundle(loader, sampler, steps, desc, views)
