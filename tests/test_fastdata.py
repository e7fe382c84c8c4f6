"""The fast input path: batched device augmentations, the device pipeline, the image cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from mcssl.cli import main
from mcssl.config import load_config
from mcssl.images import denormalise, sample_photos
from mcssl.train import Trainer, train
from mcssl.train.data import build_data
from mcssl.train.device_aug import (
    adjust_hue,
    augment_views,
    crop_boxes,
    gaussian_blur,
    resized_crops,
)
from mcssl.train.imagecache import build_cache, square
from mcssl.train.sources import CacheError, DataError, resolve_items


def test_hue_rotation_matches_torchvision_per_image() -> None:
    x = torch.rand(5, 3, 12, 12)
    shift = torch.tensor([0.1, -0.1, 0.05, 0.0, -0.07])
    want = torch.stack([TF.adjust_hue(x[i], float(shift[i])) for i in range(5)])
    assert torch.allclose(adjust_hue(x, shift), want, atol=1e-5)


def test_blur_and_full_crop_match_torchvision() -> None:
    imgs = (torch.rand(4, 3, 40, 40) * 255).to(torch.uint8)
    x = imgs.float() / 255
    sigmas = [0.3, 1.0, 1.5, 2.0]
    want = torch.stack([TF.gaussian_blur(x[i], [7, 7], [s, s]) for i, s in enumerate(sigmas)])
    assert torch.allclose(gaussian_blur(x, torch.tensor(sigmas), 7), want, atol=1e-5)
    full = torch.tensor([[0.0, 0.0, 40.0, 40.0]]).repeat(4, 1)
    assert torch.equal(resized_crops(imgs, full, 40), x)  # a whole-image box at its size: exact
    assert torch.equal(resized_crops(list(imgs), full, 40), x)  # the per-image path too
    # a 2x downscale averages each 2x2 block (anti-aliased, like a box filter)
    half = resized_crops(imgs, full, 20)
    assert torch.allclose(half, torch.nn.functional.avg_pool2d(x, 2), atol=1e-5)


def test_crop_boxes_follow_random_resized_crop_rules() -> None:
    gen = torch.Generator().manual_seed(0)
    hw = torch.tensor([[300, 400]] * 4000)
    b = crop_boxes(hw, (0.25, 1.0), gen).double()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= 400).all() and (b[:, 3] <= 300).all()
    area = w * h / 120_000
    assert area.min() > 0.24 and area.max() <= 1.0
    assert ((w / h) > 0.74).all() and ((w / h) < 1.35).all()  # [3/4, 4/3] up to rounding
    # small crops of a square always fit at the first try: the log-ratio is symmetric
    b = crop_boxes(torch.tensor([[400, 400]] * 4000), (0.05, 0.3), gen)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    assert abs(float((w > h).double().mean()) - float((w < h).double().mean())) < 0.06
    same = crop_boxes(hw[:10], (0.25, 1.0), torch.Generator().manual_seed(0))
    assert torch.equal(same, crop_boxes(hw[:10], (0.25, 1.0), torch.Generator().manual_seed(0)))
    # a 10:1 strip never fits a crop: the fallback is its centre at the widest ratio
    strip = crop_boxes(torch.tensor([[30, 300]]), (0.9, 1.0), gen)
    assert strip.tolist() == [[130.0, 0.0, 170.0, 30.0]]


def _grey_fraction(views: torch.Tensor) -> float:
    x = denormalise(views)
    return float(((x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 1e-3).float().mean())


def test_device_views_have_the_plain_path_statistics() -> None:
    """Same images, same recipe: per-channel pixel mean / std and the greyscale rate agree."""
    cfg = load_config("smoke", ["data.repeat=40", "model.img_size=32", "data.global_crops=2"])
    plain = build_data(cfg, 0, 1, cuda=False)
    dev_cfg = load_config("smoke", ["data.repeat=40", "model.img_size=32", "data.global_crops=2",
                                    "data.pipeline=device"])  # fmt: skip
    device = build_data(dev_cfg, 0, 1, cuda=False)
    got: dict[str, list[torch.Tensor]] = {"plain": [], "device": []}
    for name, bundle in (("plain", plain), ("device", device)):
        for step, batch in enumerate(bundle.loader):
            views = bundle.views(batch, step, torch.device("cpu"))
            got[name] += views["global"]
            if step == 20:
                break
    p, d = torch.cat(got["plain"]), torch.cat(got["device"])  # 2 x 21 x 8 = 336 views each
    assert p.shape == d.shape == (336, 3, 32, 32)
    assert torch.allclose(p.mean((0, 2, 3)), d.mean((0, 2, 3)), atol=0.12)
    assert torch.allclose(p.std((0, 2, 3)), d.std((0, 2, 3)), rtol=0.1)
    assert abs(_grey_fraction(d) - 0.2) < 0.07 and abs(_grey_fraction(p) - 0.2) < 0.07


def test_device_views_are_seeded_by_step() -> None:
    imgs = [(torch.rand(3, 50 + 5 * i, 60) * 255).to(torch.uint8) for i in range(3)]
    a = augment_views(imgs, 2, 16, (0.3, 1.0), torch.Generator().manual_seed(1))
    b = augment_views(imgs, 2, 16, (0.3, 1.0), torch.Generator().manual_seed(1))
    c = augment_views(imgs, 2, 16, (0.3, 1.0), torch.Generator().manual_seed(2))
    assert len(a) == 2 and a[0].shape == (3, 3, 16, 16)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and not torch.equal(a[0], c[0])


def _photo_folder(root: Path) -> Path:
    root.mkdir()
    for name, img in list(sample_photos().items())[:4]:
        img.save(root / f"{name}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_cache_round_trip_skips_bad_files_and_trains(tmp_path: Path) -> None:
    photos = _photo_folder(tmp_path / "photos")
    out = tmp_path / "c.npy"
    assert main(["cache", str(photos), str(out), "--size", "48", "--workers", "2"]) == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["count"] == 4 and len(info["skipped"]) == 1 and "broken.jpg" in info["skipped"][0]
    items, desc = resolve_items(f"cache:{out}*3")
    assert len(items) == 12 and "4 images at 48 px" in desc
    first = Image.open(sorted(photos.glob("*.jpg"))[0]).convert("RGB")
    assert np.array_equal(items[0].array(), square(first, 48))
    for pipeline in ("plain", "device"):
        over = [f"data.path=cache:{out}", "data.repeat=4", "optim.epochs=1",
                f"data.pipeline={pipeline}", "run.preview_every=0"]  # fmt: skip
        cfg = load_config("smoke", over)
        assert train(cfg, tmp_path / pipeline)["steps"] == 2
        rows = (tmp_path / pipeline / "metrics.jsonl").read_text().splitlines()
        assert math.isfinite(json.loads(rows[-1])["loss"])


def test_bad_caches_give_one_line_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="expected a uint8"):
        resolve_items(f"cache:{tmp_path / 'wrong.npy'}")
    with pytest.raises(DataError, match="not a readable"):
        resolve_items(f"cache:{tmp_path / 'missing.npy'}")
    with pytest.raises(CacheError, match="must end in .npy"):
        build_cache("samples", tmp_path / "c.bin")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.png").write_bytes(b"nope")
    with pytest.raises(CacheError, match="no readable images"):
        build_cache(str(tmp_path / "empty"), tmp_path / "e.npy", 16, 1)
    assert not list(tmp_path.glob("e.npy*"))  # nothing half-written is left behind


def test_device_pipeline_resume_matches_uninterrupted(tmp_path: Path) -> None:
    base = ["data.pipeline=device", "run.preview_every=0", "run.monitor_every=0"]
    ref = train(load_config("smoke", base), tmp_path / "ref")
    tr = Trainer(load_config("smoke", base), tmp_path / "cut")
    step = tr.train_step

    def stop_after_5(batch: dict) -> dict:  # as SIGTERM would: save, stop, resume later
        out = step(batch)
        tr.stop_requested = tr.step >= 5
        return out

    tr.train_step = stop_after_5  # type: ignore[method-assign]
    assert tr.fit()["steps"] == 5
    cut = train(load_config("smoke", base), tmp_path / "cut", resume=True)
    assert ref["steps"] == cut["steps"] == 18
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["student"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["student"]
    assert all(torch.equal(a[k], b[k]) for k in a)
