"""`mcssl eval concepts`: benchmark data, baselines, scoring and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcssl.cli import main
from mcssl.config import ModelConfig
from mcssl.evaluation.concepts import (
    BenchmarkError,
    from_folder,
    load_benchmark,
    pixel_features,
    random_like,
    score,
    truth_at,
)
from mcssl.explore.encoder import Encoder
from mcssl.models import build_backbone


def _two_colour_image(split: int) -> tuple[Image.Image, np.ndarray]:
    """32x32: left part red, right part blue (at column ``split``); mask 1 / 2."""
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :split] = (200, 30, 30)
    arr[:, split:] = (30, 30, 200)
    mask = np.ones((32, 32), np.int64)
    mask[:, split:] = 2
    return Image.fromarray(arr), mask


def test_pixel_baseline_is_perfect_when_colour_is_the_concept() -> None:
    from mcssl.evaluation.concepts import Labelled

    data = [Labelled(*_two_colour_image(s), f"i{s}") for s in (8, 16, 24)]
    feats = pixel_features(8, 32)([d.image for d in data])
    assert [f[0].shape for f in feats] == [(16, 192)] * 3 and feats[0][1] == (4, 4)
    got = score(feats, data, patch=8)
    assert got["ari"] == pytest.approx(1.0) and got["miou"] == pytest.approx(1.0)
    assert got["nmi"] == pytest.approx(1.0) and got["images"] == 3


def test_truth_follows_the_model_grid() -> None:
    mask = np.zeros((10, 20), np.int64)
    mask[:, 10:] = 3
    assert truth_at(mask, (2, 4), 4).tolist() == [[0, 0, 3, 3], [0, 0, 3, 3]]


def test_random_baseline_is_the_same_architecture_with_new_weights() -> None:
    bb = build_backbone(ModelConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32))
    enc = Encoder(bb, None, None, 0.04, {}, "x")
    a, b = random_like(enc, 0), random_like(enc, 0)
    sa, sb, so = a.backbone.state_dict(), b.backbone.state_dict(), bb.state_dict()
    assert sa.keys() == so.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # seeded
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], so["blocks.0.attn.qkv.weight"])
    assert a.patch_size == 8 and a.head is None


def test_folder_benchmark_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img, mask = _two_colour_image(16)
    img.save(tmp_path / "images" / "a.png")
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    got = from_folder(tmp_path)
    assert len(got) == 1 and got[0].name == "a" and np.array_equal(got[0].mask, mask)
    Image.fromarray(mask[:16].astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(BenchmarkError, match="32x32"):
        from_folder(tmp_path)
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    img.save(tmp_path / "images" / "b.png")
    with pytest.raises(BenchmarkError, match="no mask"):
        from_folder(tmp_path)
    for bad, words in [("synthetic:x", "integer N"), ("synthetic:0", "at least 1")]:
        with pytest.raises(BenchmarkError, match=words):
            load_benchmark(bad)
    with pytest.raises(BenchmarkError, match="images/ and masks/"):
        load_benchmark(str(tmp_path / "images"))


def test_command_prints_a_table_and_writes_json(
    smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.json"
    code = main(
        ["eval", "concepts", "--checkpoint", str(smoke_run), "--data", "synthetic:6",
         "--seeds", "0", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "random_vit" in text and "pixels" in text and "6 images x 2 seeds" in text
    res = json.loads(out.read_text())
    assert set(res["methods"]) == {"checkpoint", "random_vit", "pixels"}
    for m in res["methods"].values():
        assert 0 <= m["miou"] <= 1 and -1 <= m["ari"] <= 1 and 0 <= m["nmi"] <= 1
    assert [r["seed"] for r in res["per_seed"]["pixels"]] == [0, 1]
    assert main(["eval", "concepts", "--checkpoint", str(smoke_run), "--data", "nope"]) == 1
    assert (
        "mcssl eval concepts: error: nope: expected images/ and masks/" in capsys.readouterr().err
    )
