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
    UNLABELLED,
    BenchmarkError,
    Labelled,
    argmax_spread,
    colour_features,
    featurisers,
    from_folder,
    image_share,
    jackknife_se,
    left_out,
    load_benchmark,
    pixel_features,
    random_like,
    score,
    texture_features,
    truth_at,
)
from mcssl.explore.concepts import K_MAX
from mcssl.explore.encoder import Encoder, load_encoder
from mcssl.images import neighbourhood_mean
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

    data = [Labelled(*_two_colour_image(s), f"i{s}") for s in (8, 16, 24)]
    feats = pixel_features(8, 32)([d.image for d in data])
    assert [f[0].shape for f in feats] == [(16, 192)] * 3 and feats[0][1] == (4, 4)
    got = score(feats, data, patch=8)
    assert got["ari"] == pytest.approx(1.0) and got["miou"] == pytest.approx(1.0)
    assert got["nmi"] == pytest.approx(1.0) and got["images"] == 3


def test_unlabelled_cells_are_left_out_of_every_score_against_the_truth() -> None:
    """Hand-labelled photos have boxes, not full masks: a region nobody boxed (255) must not
    count as a class. Here it has the colour of class 1, so scoring it as a class of its own
    would split one colour into two classes (ARI and NMI < 1)."""
    data = []
    for split in (8, 16):
        img, mask = _two_colour_image(24)
        mask[:, split:24] = UNLABELLED
        data.append(Labelled(img, mask, f"i{split}"))
    feats = pixel_features(8, 32)([d.image for d in data])
    got = score(feats, data, patch=8)
    assert got["ari"] == pytest.approx(1.0) and got["miou"] == pytest.approx(1.0)
    assert got["nmi"] == pytest.approx(1.0) and got["images"] == 2
    # the image share is a property of all the features, labelled or not
    assert got["image_share"] == pytest.approx(image_share([f[0] for f in feats]))
    data[0].mask[:] = UNLABELLED  # an image with no labelled cell is skipped, not an error
    assert score(feats, data, patch=8)["images"] == 1


@pytest.mark.parametrize("spec_file", ["photo_regions.json", "photo_regions_gcompris.json"])
def test_photo_region_boxes_are_well_formed(spec_file: str) -> None:
    """The hand-labelled photos of scripts/ (rounds 31 and 33): known kinds, boxes inside the
    image, each kind in at least two photos (else it cannot be shared across photos), and the
    kinds of round 31 keep their ids in both files (both sets go into one folder)."""
    scripts = Path(__file__).parents[1] / "scripts"
    spec = json.loads((scripts / spec_file).read_text())
    first = json.loads((scripts / "photo_regions.json").read_text())["kinds"]
    assert spec["kinds"][: len(first)] == first
    photos_of: dict[str, set[str]] = {k: set() for k in spec["kinds"]}
    for name, boxes in spec["photos"].items():
        for kind, x0, y0, x1, y1 in boxes:
            assert kind in photos_of, (name, kind)
            assert 0 <= x0 < x1 <= 10 and 0 <= y0 < y1 <= 10, (name, kind)
            photos_of[kind].add(name)
    assert min(len(v) for v in photos_of.values()) >= 2, photos_of


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


def test_random_baseline_has_timms_init_even_for_a_loaded_model() -> None:
    """Checkpoints are built with weight_init="skip" (their weights are loaded next); the
    random ViT must still get timm's init (linear weights: truncated normal, std 0.02), not
    PyTorch's default (std 1 / sqrt(3 fan_in) = 0.042 for qkv here): that changed the
    baseline's co-clustering NMI from 0.21 to 0.04."""
    cfg = ModelConfig(arch="vit_tiny_patch16_224", patch_size=8, img_size=32)
    for init in (True, False):
        enc = Encoder(build_backbone(cfg, init=init), None, None, 0.04, {}, "x")
        w = random_like(enc, 0).backbone.state_dict()["blocks.3.attn.qkv.weight"]
        assert 0.017 < float(w.std()) < 0.021


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
    (tmp_path / "images" / "b.png").unlink()
    many = np.arange(32 * 32).reshape(32, 32) % (K_MAX + 1)  # one class too many, and unlabelled
    many[0, 0] = UNLABELLED
    Image.fromarray(many.astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(BenchmarkError, match=f"{K_MAX + 1} classes; co-clustering takes at most"):
        from_folder(tmp_path)
    many[many == K_MAX] = UNLABELLED  # K_MAX classes: fine
    Image.fromarray(many.astype(np.uint8)).save(tmp_path / "masks" / "a.png")
    assert len(from_folder(tmp_path)) == 1


def test_the_jackknife_leaves_each_image_or_group_out_once() -> None:
    data, splits = [], (8, 16, 24, 16, 8)
    for i, split in enumerate(splits):
        img, mask = _two_colour_image(split)
        data.append(Labelled(img, mask, f"i{i}"))
    feats = pixel_features(8, 32)([d.image for d in data])
    one = left_out(feats, data, 8, 0)
    assert one is not None and [r["images"] for r in one] == [4] * 5
    two = left_out(feats, data, 8, 0, groups=2)  # images 0, 2, 4 in one group, 1, 3 the other
    assert two is not None and [r["images"] for r in two] == [2, 3]
    assert left_out(feats[:2], data[:2], 8, 0) is None  # two images: nothing to leave out
    # the jackknife's standard error of a mean is the textbook one, std / sqrt(n)
    x = np.random.default_rng(0).normal(size=7)
    loo = (x.sum() - x) / 6
    assert jackknife_se(loo) == pytest.approx(x.std(ddof=1) / np.sqrt(7))


def test_on_a_folder_the_uncertainty_is_over_its_images(
    smoke_run: Path, scene_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A folder's seeds only restart k-means on the same images; which images the folder holds
    is what a result depends on, so it reports the jackknife over them (RESULTS.md round 32)."""
    out = tmp_path / "r.json"
    args = ["eval", "concepts", "--checkpoint", str(smoke_run), "--data", str(scene_folder),
            "--seeds", "0", "1", "--resolution", "32", "--layer", "-1", "--facet", "tokens",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    got = json.loads(out.read_text())["methods"]
    enc, data = load_encoder(smoke_run), from_folder(scene_folder)
    runs, p = featurisers(enc, 32, -1, True, 0, "tokens"), enc.patch_size
    feats = {n: runs[n]([d.image for d in data]) for n in ("checkpoint", "pixels")}
    loo = {n: np.mean([[r["nmi"] for r in left_out(f, data, p, s)] for s in (0, 1)], 0)
           for n, f in feats.items()}  # fmt: skip
    assert got["pixels"]["nmi_se_images"] == pytest.approx(jackknife_se(loo["pixels"]))
    paired = jackknife_se(loo["checkpoint"] - loo["pixels"])
    assert got["pixels"]["nmi_gap_se_images"] == pytest.approx(paired)
    assert got["pixels"]["nmi_gap"] == pytest.approx(
        got["checkpoint"]["nmi"] - got["pixels"]["nmi"]
    )
    ari = got["colour_stats"]
    assert (
        f"checkpoint minus colour_stats: ARI {ari['ari_gap']:+.3f} ± {ari['ari_gap_se_images']:.3f}"
        in text
    )
    assert "± = standard error over the images" in text
    ck = got["checkpoint"]
    assert f"{ck['nmi']:.3f} ± {ck['nmi_se_images']:.3f}" in text  # not ± the std over seeds


def test_command_prints_a_table_and_writes_json(
    smoke_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.json"
    code = main(
        ["eval", "concepts", "--checkpoint", str(smoke_run), "--data", "synthetic:6",
         "--seeds", "0", "1", "--modes", "fixed", "varied", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "random_vit" in text and "pixels" in text and "6 images x 2 seeds" in text
    res = json.loads(out.read_text())
    assert set(res["methods"]) == {
        "checkpoint",
        "random_vit",
        "pixels",
        "colour_stats",
        "texture_stats",
    }
    for m in res["methods"].values():
        assert 0 <= m["miou"] <= 1 and -1 <= m["ari"] <= 1 and 0 <= m["nmi"] <= 1
    assert [r["seed"] for r in res["per_seed"]["pixels"]] == [0, 1]
    assert (
        res["modes"] == ["fixed", "varied"] and res["methods"] == res["by_mode"]["fixed"]["methods"]
    )
    assert "[varied]" in text and "colour_stats" in text
    ck = res["by_mode"]["varied"]["methods"]["checkpoint"]
    assert 0 <= ck["image_share"] <= 1 and 0 <= ck["nmi_image_argmax"] <= 1
    assert ck["images_per_concept"] >= 1 and "image_share" in res["methods"]["pixels"]
    assert "nmi_image_argmax" not in res["methods"]["pixels"]  # no head, no argmax
    assert "ari_se_images" not in ck  # scenes: each seed draws new ones, ± is over seeds
    assert main(["eval", "concepts", "--checkpoint", str(smoke_run), "--data", "nope"]) == 1
    assert (
        "mcssl eval concepts: error: nope: expected images/ and masks/" in capsys.readouterr().err
    )


def test_image_share_is_one_for_image_id_features_and_zero_for_shared_ones() -> None:
    rng = np.random.default_rng(0)
    onehot = [np.tile(np.eye(4)[i], (10, 1)) for i in range(4)]  # tokens = the image id
    assert image_share(onehot) == pytest.approx(1.0)
    same = rng.normal(size=(10, 8))
    assert image_share([same, same[::-1], same]) == pytest.approx(0.0, abs=1e-12)
    # two images, tokens +-e1 inside each, image offsets +-e2: half the variance is identity
    a = np.array([[1.0, 1.0], [-1.0, 1.0]])
    b = np.array([[1.0, -1.0], [-1.0, -1.0]])
    assert image_share([a, b]) == pytest.approx(0.5)
    assert image_share([np.ones((3, 2)), np.ones((3, 2))]) == 0.0  # no variance at all


def test_argmax_spread_tells_per_image_vocabularies_from_shared_ones() -> None:
    own = [np.full(9, i) for i in range(5)]  # each image its own pseudo-concept
    got = argmax_spread(own)
    assert got["nmi_image_argmax"] == pytest.approx(1.0) and got["images_per_concept"] == 1.0
    shared = [np.arange(9) % 3 for _ in range(5)]  # the same three concepts in every image
    got = argmax_spread(shared)
    assert got["nmi_image_argmax"] == pytest.approx(0.0, abs=1e-9)
    assert got["images_per_concept"] == 5.0
    mixed = [np.array([0, 0, 1]), np.array([0, 2, 2]), np.array([0, 3, 3])]  # 3, 1, 1, 1 images
    assert argmax_spread(mixed)["images_per_concept"] == 1.0


def test_colour_stats_are_each_cells_mean_and_std() -> None:
    from mcssl.images import MEAN, STD

    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:8, :8] = (255, 0, 0)  # top-left cell flat red
    arr[:8, 8:] = 255  # top-right cell: half white, half black rows
    arr[4:8, 8:] = 0
    (t, grid, am) = colour_features(8, 16)([Image.fromarray(arr)])[0]
    assert t.shape == (4, 6) and grid == (2, 2) and am is None
    red = (np.array([1.0, 0.0, 0.0]) - MEAN) / STD
    assert t[0, :3] == pytest.approx(red, abs=1e-5) and t[0, 3:] == pytest.approx(0, abs=1e-5)
    assert t[1, 3:] == pytest.approx(0.5 / np.asarray(STD), abs=1e-5)  # std of {0, 1} = 0.5


def _two_tone(kind: str, a: tuple, b: tuple, phase: int = 0) -> Image.Image:
    from mcssl.scenes import _texture

    pattern = _texture(kind, 32, 32, 4, phase)[..., None]
    return Image.fromarray((pattern * np.array(a) + (1 - pattern) * np.array(b)).astype(np.uint8))


def test_texture_stats_are_colour_blind_and_tell_textures_apart() -> None:
    red, dark_red = (200, 40, 40), (60, 10, 10)
    images = [
        _two_tone("stripes", red, dark_red),
        _two_tone("stripes", (30, 60, 220), (90, 120, 250)),  # other hues and contrast
        _two_tone("stripes", red, dark_red, phase=3),  # the stripes fall elsewhere in a cell
        _two_tone("checker", red, dark_red),
    ]
    (f, grid, am), (blue, _, _), (shifted, _, _), (checker, _, _) = texture_features(8, 32)(images)
    assert f.shape == (16, 8 * 5 + 8) and grid == (4, 4) and am is None
    assert np.abs(blue - f).max() < 1e-4
    assert np.abs(shifted - f).max() < 0.05
    assert np.abs(checker - f).max() > 0.2
    colour = [t for t, _, _ in colour_features(8, 32)(images[:2])]
    assert np.abs(colour[0] - colour[1]).max() > 1  # where colour statistics see a difference


def test_neighbourhood_mean_averages_each_cell_with_its_eight_neighbours() -> None:
    f = torch.zeros(9, 2)
    f[4, 0] = 9.0  # the centre of a 3 x 3 grid
    f[0, 1] = 9.0  # a corner: replicated over the padding, it counts 4 times for itself
    got = neighbourhood_mean(f[None], (3, 3))[0]
    assert got[:, 0].tolist() == [1.0] * 9
    assert got[:, 1].tolist() == pytest.approx([4, 2, 0, 2, 1, 0, 0, 0, 0])


def test_texture_stats_share_classes_across_varied_scenes() -> None:
    """Where colour says nothing, texture still tells the classes apart across scenes."""
    data = load_benchmark("synthetic:40", 0, "varied")
    images = [d.image for d in data]
    texture = score(texture_features(8, 128)(images), data, 8)
    colour = score(colour_features(8, 128)(images), data, 8)
    assert texture["nmi"] > 0.4 and texture["nmi"] > 3 * colour["nmi"]
    assert texture["ari"] > 0.6  # (0.46 and 0.64 measured; each cell alone: 0.37 and 0.57)
    assert texture["image_share"] < 0.5 * colour["image_share"]


def test_colour_stats_solve_fixed_colours_but_not_varied_ones() -> None:
    """Colour alone gives the class away in the fixed mode, not in the varied one."""
    got = {}
    for mode in ("fixed", "varied"):
        data = load_benchmark("synthetic:40", 0, mode)
        got[mode] = score(colour_features(8, 64)([d.image for d in data]), data, 8)["nmi"]
    assert got["fixed"] > 0.2 and got["varied"] < 0.6 * got["fixed"]
    assert load_benchmark("synthetic:2", 0, "varied")[0].name.startswith("scenevaried")
    with pytest.raises(BenchmarkError, match="one of"):
        load_benchmark("synthetic:2", 0, "odd")
