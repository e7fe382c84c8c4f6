"""`mcssl concepts`, `mcssl index` and `mcssl query` on real photos and on bad images."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcssl.checkpoint import export_teacher
from mcssl.cli import main
from mcssl.config import load_config
from mcssl.images import sample_photos
from mcssl.train import train


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exp")
    train(load_config("smoke", ["optim.epochs=1"]), root / "run")
    export_teacher(root / "run", root / "t.safetensors")
    return root / "t.safetensors"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    out = []
    for name, img in list(sample_photos().items())[:5]:
        img.thumbnail((160, 160))
        img.save(root / f"{name}.jpg", quality=90)
        out.append(root / f"{name}.jpg")
    return out


def concepts(export: Path, out: Path, images: list[Path], *extra: str) -> tuple[int, dict]:
    code = main(
        [
            "concepts",
            "--checkpoint",
            str(export),
            "--k",
            "2",
            "3",
            "4",
            "--resolution",
            "64",
            "--out",
            str(out),
            *extra,
            *map(str, images),
        ]
    )
    return code, json.loads((out / "concepts.json").read_text())


def test_concepts_writes_label_maps_and_overlays(export, photos, tmp_path: Path) -> None:
    code, data = concepts(export, tmp_path / "c", photos)
    assert code == 0 and len(data["images"]) == len(photos)
    for rec, path in zip(data["images"], photos, strict=True):
        assert rec["error"] is None and rec["path"] == str(path)
        w, h = Image.open(path).size
        gh, gw = rec["grid"]
        assert min(gh, gw) == 8 and abs(gw / gh - w / h) < 0.2  # 64 px / patch 8, aspect kept
        for k in (2, 3, 4):
            grid = np.array(rec["labels"][str(k)])
            assert grid.shape == (gh, gw)
            assert 1 <= len(np.unique(grid)) <= k and grid.min() >= 0 and grid.max() < k
            mask = np.asarray(Image.open(tmp_path / "c" / rec["files"][str(k)]["mask"]))
            assert mask.shape == (h, w) and set(np.unique(mask)) <= set(np.unique(grid))
            assert Image.open(tmp_path / "c" / rec["files"][str(k)]["overlay"]).size == (w, h)
            assert len(rec["top_concepts"][str(k)]) == k
    _, again = concepts(export, tmp_path / "c2", photos)
    assert [r["labels"] for r in again["images"]] == [r["labels"] for r in data["images"]]


def png_with_header(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims width x height pixels."""
    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def bad_images(root: Path, photo: Image.Image) -> dict[str, bool]:
    """name -> should it be processed (True) or rejected (False)?"""
    root.mkdir()
    buf = io.BytesIO()
    photo.save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello, I am not a JPEG")
    Image.new("RGB", (1, 1), "red").save(root / "one_pixel.png")
    a16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(a16).save(root / "sixteen_bit.png")
    photo.convert("CMYK").save(root / "cmyk.jpg")
    pal = photo.convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(root / "palette_transparent.png")
    frames = [photo, photo.rotate(90)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(root / "exif_rotated.jpg", exif=exif)
    (root / "huge_header.png").write_bytes(png_with_header(20000, 20000))
    ok = {
        "sixteen_bit.png",
        "cmyk.jpg",
        "palette_transparent.png",
        "animated.gif",
        "exif_rotated.jpg",
    }
    return {p.name: p.name in ok for p in root.iterdir()}


def test_bad_images_get_one_line_each_and_the_rest_runs(
    export, photos, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photo = Image.open(photos[0]).convert("RGB")
    expected = bad_images(tmp_path / "bad", photo)
    files = [photos[1], *sorted((tmp_path / "bad").iterdir())]
    code, data = concepts(export, tmp_path / "out", files)
    err = capsys.readouterr().err
    assert code == 1  # some images failed
    assert "Traceback" not in err
    by_name = {Path(r["path"]).name: r for r in data["images"]}
    assert by_name[photos[1].name]["error"] is None
    for name, processed in expected.items():
        rec = by_name[name]
        if processed:
            assert rec["error"] is None, (name, rec["error"])
        else:
            assert rec["error"] and "\n" not in rec["error"] and name in rec["error"]
            assert sum(name in line for line in err.splitlines()) == 1, name
    w, h = photo.size
    assert by_name["exif_rotated.jpg"]["size"] == [h, w]  # orientation applied
    assert "decompression bomb" in by_name["huge_header.png"]["error"]
    assert "too small" in by_name["one_pixel.png"]["error"]


@pytest.fixture(scope="module")
def indexed(export: Path, photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    idx = tmp_path_factory.mktemp("index") / "idx"
    args = ["--checkpoint", str(export), "--resolution", "64"]
    assert main(["index", *args, "--out", str(idx), *map(str, photos)]) == 0
    return idx


def run_query(idx: Path, image: Path, capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    """`mcssl query` on the index; asserts exit 0 and returns the JSON lines."""
    assert main(["query", "--index", str(idx), "--image", str(image), *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_index_and_query(indexed, photos, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    idx = indexed

    def query(*extra: str) -> list[dict]:
        return run_query(indexed, photos[0], capsys, "--token", "2", "3", "--top", "8", *extra)

    hits = query()
    assert len(hits) == 8
    assert hits[0]["image"] == str(photos[0]) and (hits[0]["row"], hits[0]["col"]) == (2, 3)
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    own = hits[0]["pseudo_concept"]
    same = query("--same-concept")
    assert same and all(h["pseudo_concept"] == own for h in same)
    others = query("--exclude-own", "--one-per-image")
    names = [h["image"] for h in others]
    assert str(photos[0]) not in names and len(names) == len(set(names)) == len(photos) - 1
    new = tmp_path / "new.png"
    Image.open(photos[0]).save(new)  # same pixels, not indexed: embedded with the checkpoint
    assert (
        main(["query", "--index", str(idx), "--image", str(new), "--token", "2", "3", "--top", "1"])
        == 0
    )
    hit = json.loads(capsys.readouterr().out.splitlines()[0])
    assert hit["image"] == str(photos[0]) and (hit["row"], hit["col"]) == (2, 3)


def test_a_broken_index_is_one_line_from_the_cli(photos, tmp_path: Path, capsys) -> None:
    """TokenIndexError is one of the CLI's user errors (it loads only with faiss)."""
    junk = tmp_path / "junk"
    junk.mkdir()
    query = ["query", "--index", str(junk), "--image", str(photos[0]), "--token", "0", "0"]
    assert main(query) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mcssl query: error: ") and "not a token index" in err
    assert "\n" not in err


def test_cocluster_gives_one_labelling_across_images(export, photos, tmp_path: Path) -> None:
    from mcssl.explore.concepts import cocluster_for_ks
    from mcssl.explore.encoder import load_encoder
    from mcssl.explore.features import FeatureExtractor, Settings

    code, data = concepts(export, tmp_path / "co", photos[:3], "--cocluster", "--fp32")
    assert code == 0 and data["settings"]["cocluster"] is True
    ex = FeatureExtractor(load_encoder(export), Settings(resolution=64, precision="fp32"))
    feats = ex([Image.open(p).convert("RGB") for p in photos[:3]])
    want = cocluster_for_ks([f.tokens for f in feats], (2, 3, 4), 0)
    for i, rec in enumerate(data["images"]):
        for k in (2, 3, 4):
            assert np.array(rec["labels"][str(k)]).ravel().tolist() == want[k][i].tolist()
    # one k-means over all images differs from per-image k-means on at least one image
    _, alone = concepts(export, tmp_path / "alone", photos[:3])
    assert any(
        a["labels"] != b["labels"] for a, b in zip(alone["images"], data["images"], strict=True)
    )


def test_query_by_cluster_mean(indexed, photos, capsys) -> None:
    hits = run_query(
        indexed, photos[0], capsys, "--cluster", "3", "1", "--top", "5", "--exclude-own"
    )
    assert len(hits) == 5 and all(h["image"] != str(photos[0]) for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert (
        main(["query", "--index", str(indexed), "--image", str(photos[0]), "--cluster", "3", "5"])
        == 1
    )
    assert "does not exist for k=3" in capsys.readouterr().err


def test_one_wording_per_image_failure_in_uploads_folders_and_the_cli(
    export, photos, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same bad file says the same thing (after its name) whether it was uploaded, found
    in a folder or given to `mcssl concepts`; a file uploaded twice is one note."""
    from mcssl.explore.gallery import Gallery

    photo = Image.open(photos[0]).convert("RGB")
    expected = bad_images(tmp_path / "bad", photo)
    (tmp_path / "bad" / "mid_header.png").write_bytes(png_with_header(11000, 10000))
    bad = sorted(p for p in (tmp_path / "bad").iterdir() if not expected.get(p.name, False))
    assert len(bad) == 6

    def reasons(lines: list[str], prefix: str) -> dict[str, str]:
        out = {}
        for line in lines:
            name, reason = line.removeprefix(prefix).split(": ", 1)
            out[Path(name).name] = reason
        return out

    uploads = Gallery.from_uploads([(p.name, p.read_bytes()) for p in bad + bad[:1]])
    folder = Gallery.from_folder(tmp_path / "bad")
    concepts(export, tmp_path / "out", bad)
    cli = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mcssl concepts")]
    up = reasons(uploads.errors, "")
    assert up.pop(bad[0].name) and uploads.errors[-1].endswith(
        "uploaded more than once (used once)"
    )
    assert (
        reasons(uploads.errors[:-1], "")
        == reasons(folder.errors, "")
        == reasons(cli, "mcssl concepts: error: ")
    )
    got = reasons(folder.errors, "")
    assert got["huge_header.png"] == got["mid_header.png"].replace("110,000,000", "400,000,000")
    assert (
        "exceeds the limit of 100,000,000 (refused as a possible decompression bomb)"
        in got["mid_header.png"]
    )
    assert got["zero.jpg"] == "cannot read image (the file is empty)"
    assert got["text.jpg"] == "cannot read image (not an image format Pillow can read)"
