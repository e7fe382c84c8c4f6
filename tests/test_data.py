"""Data: image loading, file lists, the resumable distributed sampler, seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcssl.config import load_config
from mcssl.images import ImageError, find_images, load_rgb
from mcssl.scenes import make_scenes, spec_for
from mcssl.train.data import ResumableDistributedSampler, UnlabelledImages, build_data
from mcssl.train.sources import DataError, resolve_items


def test_sampler_splits_ranks_disjointly_and_resumes_mid_epoch() -> None:
    n, world, bs = 103, 3, 4
    per_rank = [list(ResumableDistributedSampler(n, r, world, 0, bs)) for r in range(world)]
    idx = [i for rank in per_rank for _, i in rank]
    assert all(len(r) == 32 for r in per_rank)  # 103 // 3 = 34 -> 8 full batches of 4
    assert len(set(idx)) == len(idx) == 96  # disjoint across ranks
    s = ResumableDistributedSampler(n, 1, world, 0, bs)
    s.set_epoch(0, skip_batches=3)
    assert list(s) == per_rank[1][12:] and len(s) == 20
    s.set_epoch(1)
    assert [i for _, i in s] != [i for _, i in per_rank[1]]  # reshuffled per epoch
    assert {e for e, _ in s} == {1}


def test_augmentation_is_seeded_by_epoch_and_index() -> None:
    cfg = load_config("smoke", ["data.global_crops=2"])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), np.uint8))
    ds = UnlabelledImages([img, img], cfg, seed=3)
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a["global"][0], b["global"][0])
    assert not torch.equal(a["global"][0], a["global"][1])  # two different views
    assert not torch.equal(a["global"][0], ds[(1, 1)]["global"][0])  # next epoch differs
    assert a["global"][0].shape == (3, 32, 32)


def test_loader_gives_same_batches_with_and_without_workers() -> None:
    base = ["data.repeat=2", "optim.batch_size=4"]
    b0 = next(iter(build_data(load_config("smoke", [*base, "data.workers=0"]), 0, 1, False).loader))
    b2 = next(iter(build_data(load_config("smoke", [*base, "data.workers=2"]), 0, 1, False).loader))
    assert torch.equal(b0["global"][0], b2["global"][0])


def test_file_list_and_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.png", "sub/b.JPG", "sub/c.webp", "notes.txt"):
        p = tmp_path / name
        if name.endswith(".txt"):
            p.write_text("x")
        else:
            Image.new("RGB", (8, 8)).save(
                p, format={"png": "PNG", "jpg": "JPEG"}.get(p.suffix.lower()[1:], "WEBP")
            )
    assert [p.name for p in find_images(tmp_path)] == ["a.png", "b.JPG", "c.webp"]
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\na.png\nsub/c.webp\n")
    assert find_images(lst) == [tmp_path / "a.png", tmp_path / "sub/c.webp"]


def test_mixed_sources_with_weights(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.png")
    items, desc = resolve_items(f"samples*2+synthetic:5:1+{tmp_path}*3")
    assert len(items) == 9 * 2 + 5 + 3
    assert items[:9] == items[9:18]  # the photos twice, in the same order
    assert [np.asarray(i).shape for i in items[18:23]] == [(128, 128, 3)] * 5
    assert items[23:] == [tmp_path / "a.png"] * 3
    assert (
        desc
        == f"9 scikit-image/scikit-learn photos x2 + 5 synthetic scenes + {tmp_path}: 1 images x3"
    )
    again, _ = resolve_items("synthetic:5:1")
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(again, items[18:23], strict=True)
    )
    for bad, words in [
        ("synthetic:x", "expected synthetic:N"),
        ("synthetic:0", "at least 1"),
        ("samples*two", "integer M"),
        (str(tmp_path / "missing"), "missing"),
    ]:
        with pytest.raises(DataError, match=words):
            resolve_items(bad)


def test_varied_scene_source_draws_the_benchmarks_varied_mode() -> None:
    """synthetic-varied:N:SEED gives exactly the varied benchmark scenes of that seed."""
    items, desc = resolve_items("synthetic-varied:3:7")
    assert desc == "3 synthetic scenes (varied)"
    want = make_scenes(3, 7, spec_for("varied"))
    assert all(np.array_equal(np.asarray(a), img) for a, (img, _) in zip(items, want, strict=True))
    fixed, _ = resolve_items("synthetic:3:7")
    assert not np.array_equal(np.asarray(fixed[0]), np.asarray(items[0]))
    with pytest.raises(DataError, match="expected synthetic-varied:N"):
        resolve_items("synthetic-varied:x")


def test_load_rgb_converts_odd_modes(tmp_path: Path) -> None:
    a16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "16bit.png")
    out = load_rgb(tmp_path / "16bit.png")
    assert out.mode == "RGB" and np.asarray(out)[-1, -1, 0] == 255
    Image.new("CMYK", (10, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = np.asarray(load_rgb(tmp_path / "cmyk.jpg"))[3, 5]
    assert r > 200 and g < 50 and b < 50  # CMYK (0, 255, 255, 0) is red
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png")
    assert np.asarray(load_rgb(tmp_path / "pal.png"))[0, 0].tolist() == [255, 255, 255]
    rot = Image.new("RGB", (20, 10))
    exif = rot.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    rot.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (10, 20)


def test_load_rgb_refuses_bad_files_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "zero.jpg").write_bytes(b"")
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    for path, needle in (
        (tmp_path / "zero.jpg", "cannot read image"),
        (tmp_path / "missing.jpg", "no such file"),
        (tmp_path / "big.png", "exceeds the limit"),
    ):
        with pytest.raises(ImageError, match=needle) as e:
            load_rgb(path, max_pixels=300 * 299)
        assert "\n" not in str(e.value)
