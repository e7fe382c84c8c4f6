"""Feature facets (block output tokens / attention keys) and the settings a checkpoint stores
(`mcssl eval defaults --write`): read back and used by the CLI and the app, flags override."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from streamlit.testing.v1 import AppTest
from timm.models.vision_transformer import VisionTransformer

from mcssl.checkpoint import CheckpointError, store_defaults
from mcssl.cli import main
from mcssl.evaluation.concepts import load_benchmark, score
from mcssl.evaluation.defaults import against_best, format_grid, grid_features, search
from mcssl.explore.concepts import kmeans_labels
from mcssl.explore.encoder import Encoder, load_encoder
from mcssl.explore.features import (
    FeatureExtractor,
    Settings,
    block_features,
    facets_of,
    to_tensor,
)
from mcssl.explore.gallery import Gallery, gallery_index
from mcssl.metrics import ari

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")
STORED = {"resolution": 48, "layer": 0, "facet": "keys"}  # the smoke model: depth 2, patch 8


def _random_vit(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=0,
        qkv_bias=True, dynamic_img_size=True,
    )  # fmt: skip
    for p in vit.parameters():  # timm zero-inits the qkv bias: make it count
        p.data.add_(0.05 * torch.randn_like(p))
    return Encoder(vit.eval().requires_grad_(False), None, None, 0.04, {}, "random")


def _keys_by_hand(vit: VisionTransformer, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Block ``layer``'s keys from its weights: the middle third of the qkv projection of the
    block's normed input, data tokens only. -> (B, N, D)."""
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for blk in vit.blocks[:layer]:
        h = blk(h)
    h = vit.blocks[layer].norm1(h)
    d = vit.embed_dim
    qkv = vit.blocks[layer].attn.qkv
    k = h @ qkv.weight[d : 2 * d].T + qkv.bias[d : 2 * d]
    return k[:, vit.num_prefix_tokens :]


def test_keys_facet_is_the_attention_keys_recomputed_from_the_weights() -> None:
    enc = _random_vit()
    x = torch.randn(2, 3, 32, 40)  # 4 x 5 tokens
    views = [(0, "keys"), (1, "keys"), (1, "tokens"), (2, "keys")]
    got, probs = block_features(enc, x, views)
    assert probs is None
    for layer in (0, 1, 2):  # tolerance: fp32 rounding of the same products
        want = _keys_by_hand(enc.backbone, x, layer)
        assert got[(layer, "keys")].shape == (2, 20, 48)
        torch.testing.assert_close(got[(layer, "keys")], want, rtol=0, atol=1e-5)
    assert not torch.allclose(got[(1, "tokens")], got[(1, "keys")], atol=1e-2)
    # through the extractor, fp32 and bf16 (cosine: bf16 keeps about 3 significant digits)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), np.uint8))
    fp32, bf16 = (
        FeatureExtractor(enc, Settings(resolution=32, layer=-2, facet="keys", precision=p))([img])
        for p in ("fp32", "bf16")
    )
    want = _keys_by_hand(enc.backbone, to_tensor(img, (40, 32))[None], 1)[0].numpy()
    np.testing.assert_allclose(fp32[0].tokens, want, rtol=0, atol=1e-5)
    a, b = fp32[0].tokens, bf16[0].tokens
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99 and bf16[0].tokens.dtype == np.float32


def test_keys_with_concepts_are_both_halves_normalised_side_by_side(smoke_export: Path) -> None:
    enc = load_encoder(smoke_export)
    x = torch.randn(2, 3, 32, 40)
    got, probs = block_features(enc, x, [(0, "keys"), (0, "keys+concepts")])
    both, c = got[(0, "keys+concepts")], got[(0, "keys")].shape[-1]
    assert probs is not None and both.shape == (2, 20, c + probs.shape[-1])
    keys, root = both[..., :c], both[..., c:]
    torch.testing.assert_close(keys, torch.nn.functional.normalize(got[(0, "keys")], dim=-1))
    want = torch.nn.functional.normalize(probs.sqrt(), dim=-1)  # Hellinger: sqrt, then unit
    torch.testing.assert_close(root, want)
    torch.testing.assert_close(both.norm(dim=-1), torch.full((2, 20), 2**0.5))  # equal halves


def test_the_cli_offers_the_library_facets() -> None:
    from mcssl import cli
    from mcssl.explore.encoder import FACETS

    assert cli.FACETS == FACETS  # kept apart: importing the encoder module imports timm


def test_a_checkpoint_without_a_head_has_no_concept_facet(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    enc = _random_vit()
    assert facets_of(enc) == ("tokens", "keys")
    with pytest.raises(ValueError, match="needs a patch-concept head"):
        FeatureExtractor(enc, Settings(resolution=32, facet="keys+concepts"))
    with pytest.raises(ValueError, match="needs a patch-concept head"):
        block_features(enc, torch.randn(1, 3, 32, 32), [(0, "keys+concepts")])
    from mcssl.evaluation.defaults import search

    got = search(enc, "synthetic:2", [0], ["fixed"], [32], [-1], log=lambda _: None)
    assert sorted(r["facet"] for r in got["rows"]) == ["keys", "tokens"]
    vit = tmp_path / "vit.pt"  # the same through the CLI: one line, exit 1
    torch.save(enc.backbone.state_dict(), vit)
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    args = ["concepts", "--checkpoint", str(vit), "--facet", "keys+concepts", str(img)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs a patch-concept head" in err


def test_facet_changes_the_cache_key_and_the_index(tmp_path: Path) -> None:
    enc = _random_vit()
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)) for _ in range(2)]
    tok, key = (FeatureExtractor(enc, Settings(resolution=32, facet=f)) for f in ("tokens", "keys"))
    assert tok._key(images[0]) != key._key(images[0])
    gallery = Gallery(["a.png", "b.png"], images, [], source="test")
    cache = tmp_path / "index"
    gallery_index(tok, gallery, cache)
    index = gallery_index(key, gallery, cache)  # must not reuse the tokens' index
    assert len(list(cache.iterdir())) == 2
    want = np.concatenate([f.tokens for f in key(images)])
    got = index._rows(index._index, np.arange(index.ntotal))
    norm = want / np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(got, norm, atol=1e-5)


@pytest.fixture
def stored(smoke_export: Path, tmp_path: Path) -> Path:
    """A copy of the smoke export with stored defaults."""
    out = tmp_path / "stored.safetensors"
    shutil.copy(smoke_export, out)
    store_defaults(out, STORED, "test")
    return out


def _tensors_and_meta(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def test_eval_defaults_write_keeps_the_tensors_and_replaces_the_file_atomically(
    smoke_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "t.safetensors"
    shutil.copy(smoke_export, path)
    before, meta_before = _tensors_and_meta(path)
    old = open(path, "rb")  # a reader that opened the file before the write  # noqa: SIM115
    args = ["eval", "defaults", "--checkpoint", str(path), "--data", "synthetic:6", "--seeds",
            "0", "--modes", "fixed", "varied", "--resolutions", "32", "48", "--write"]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.count("| 32 |") == 6 and table.count("| 48 |") == 6  # 2 layers x 3 facets
    after, meta = _tensors_and_meta(path)
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert {k: v for k, v in meta.items() if not k.startswith("default")} == meta_before
    enc = load_encoder(path)
    assert set(enc.defaults) == {"resolution", "layer", "facet"}
    assert enc.defaults["resolution"] in (32, 48) and enc.defaults["layer"] in (-1, -2)
    assert f"'resolution': {enc.defaults['resolution']}" in table  # the printed best
    assert old.read() == smoke_export.read_bytes()  # replaced, not rewritten in place
    old.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]  # no temp file left

    blocked = tmp_path / ".t.safetensors.tmp"
    blocked.mkdir()  # the temp file cannot be written: the original must survive whole
    current = path.read_bytes()
    with pytest.raises(CheckpointError, match="unchanged"):
        store_defaults(path, {"layer": -1})
    assert path.read_bytes() == current


def test_the_grid_flags_settings_whose_gap_to_the_best_is_within_the_seeds_noise() -> None:
    def row(res: int, seed_scores: list[float]) -> dict:
        mean = float(np.mean(seed_scores))
        by_mode = {"fixed": {"ari": mean, "miou": 0.5, "nmi": mean}}
        return {"resolution": res, "layer": -1, "facet": "keys", "score": mean,
                "seed_scores": seed_scores, "by_mode": by_mode}  # fmt: skip

    # each seed's scenes score every row: the second is behind by 3 standard errors (inside the
    # t interval of three seeds, 4.3), the third is 0.05 behind on every seed
    rows = [row(128, [0.6, 0.5, 0.7]), row(96, [0.58, 0.495, 0.68]), row(64, [0.55, 0.45, 0.65])]
    against_best(rows)
    d = np.array([0.02, 0.005, 0.02])
    assert [r["gap"] for r in rows] == pytest.approx([0.0, d.mean(), 0.05])
    assert rows[1]["gap_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert rows[2]["gap_se"] == pytest.approx(0.0, abs=1e-12)
    assert [r["within_noise"] for r in rows] == [True, True, False]
    result = {"modes": ["fixed"], "rows": rows, "best": rows[0], "seeds": [0, 1, 2],
              "score": "s", "data": "synthetic:3"}  # fmt: skip
    table = format_grid(result)
    assert table.splitlines()[-1].endswith(": 96 / -1 / keys")  # the tie, not the clear loser
    assert "| -0.050 ± 0.000 |" in table and "| **0.600** | 0.000 ± 0.000 |" in table

    one = [row(128, [0.6]), row(96, [0.59])]  # one seed: a gap but no noise estimate
    against_best(one)
    assert one[1]["gap"] == pytest.approx(0.01) and one[1]["within_noise"] is None
    table = format_grid(result | {"rows": one, "best": one[0], "seeds": [0]})
    assert "within noise" not in table and "| -0.010 |" in table


def test_on_a_folder_the_gap_is_judged_over_the_images_left_out() -> None:
    def row(res: int, score: float, left_out: list[float]) -> dict:
        by_mode = {"folder": {"ari": score, "miou": 0.5, "nmi": score}}
        return {"resolution": res, "layer": -1, "facet": "keys", "score": score,
                "seed_scores": [score] * 3, "by_mode": by_mode, "left_out": left_out}  # fmt: skip

    # a folder's seeds only restart k-means: the seed scores agree, so over seeds any gap would
    # look real; which images the folder holds moves the second row's gap a lot, the third's not
    best = [0.62, 0.58, 0.61, 0.59, 0.60]
    rows = [row(128, 0.6, best), row(96, 0.57, [0.55, 0.60, 0.56, 0.58, 0.56]),
            row(64, 0.3, [b - 0.3 for b in best])]  # fmt: skip
    against_best(rows)
    d = np.array([0.07, -0.02, 0.05, 0.01, 0.04])
    assert rows[1]["gap"] == pytest.approx(0.03)
    assert rows[1]["gap_se"] == pytest.approx(np.sqrt(4 * d.var()))  # the jackknife's
    assert rows[2]["gap_se"] == pytest.approx(0.0, abs=1e-12)
    assert [r["within_noise"] for r in rows] == [True, True, False]
    result = {"modes": ["folder"], "rows": rows, "best": rows[0], "seeds": [0, 1, 2],
              "score": "s", "data": "photos"}  # fmt: skip
    assert format_grid(result).splitlines()[-1] == (
        "within noise of the best (paired gap over the images left out in turn inside the 95 % "
        "t interval): 1 of 2: 96 / -1 / keys"
    )


def test_eval_defaults_on_a_folder_leaves_each_image_out_once(
    smoke_export: Path, scene_folder: Path
) -> None:
    enc = load_encoder(smoke_export)
    got = search(enc, str(scene_folder), [0, 1], resolutions=[32], layers=[-1], facets=["tokens"])
    row, data = got["best"], load_benchmark(str(scene_folder))
    (feats,) = grid_features(enc, [d.image for d in data], 32, [(-1, "tokens")]).values()
    for i in (0, 3):  # the score of the other three images, mean over the two seeds
        rest = [j for j in range(4) if j != i]
        parts = [score([feats[j] for j in rest], [data[j] for j in rest], enc.patch_size, s)
                 for s in (0, 1)]  # fmt: skip
        assert row["left_out"][i] == pytest.approx(
            np.mean([(p["ari"] + p["nmi"]) / 2 for p in parts])
        )
    assert len(row["left_out"]) == 4 and row["gap_se"] == 0.0


def test_write_needs_an_export(smoke_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "defaults", "--checkpoint", str(smoke_run), "--write"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mcssl export" in err and "--write" in err


def _concepts_json(ckpt: Path, out: Path, *flags: str) -> dict:
    img = out.parent / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 80, 3), np.uint8)).save(img)
    assert main(["concepts", "--checkpoint", str(ckpt), "--out", str(out), *flags, str(img)]) == 0
    return json.loads((out / "concepts.json").read_text())


def test_cli_uses_the_stored_defaults_and_flags_override_them(
    stored: Path, smoke_export: Path, tmp_path: Path
) -> None:
    got = _concepts_json(stored, tmp_path / "a")
    s = got["settings"]
    assert (s["resolution"], s["layer"], s["facet"]) == (48, 0, "keys")
    assert s["from_checkpoint"] == ["resolution", "layer", "facet"]
    assert got["images"][0]["grid"] == [6, 8]  # 48 px shorter side / patch 8 (80 x 64 image)
    ex = FeatureExtractor(load_encoder(stored), Settings(**STORED, precision="auto"))  # as the CLI
    img = Image.open(tmp_path / "photo.png").convert("RGB")
    want = kmeans_labels(ex([img])[0].tokens, 3, 0)
    assert ari(np.array(got["images"][0]["labels"]["3"]).ravel(), want) == 1.0  # same partition

    flags = ("--resolution", "32", "--layer", "-1", "--facet", "tokens")
    s = _concepts_json(stored, tmp_path / "b", *flags)["settings"]
    assert (s["resolution"], s["layer"], s["facet"], s["from_checkpoint"]) == (32, -1, "tokens", [])
    s = _concepts_json(smoke_export, tmp_path / "c")["settings"]  # nothing stored: built-ins
    assert (s["resolution"], s["layer"], s["facet"]) == (224, -1, "tokens")

    idx = tmp_path / "idx"  # an index records what it was built with; query embeds the same way
    assert (
        main(["index", "--checkpoint", str(stored), "--out", str(idx), str(tmp_path / "photo.png")])
        == 0
    )
    source = json.loads((idx / "source.json").read_text())
    assert (source["resolution"], source["layer"], source["facet"]) == (48, 0, "keys")

    out = tmp_path / "eval.json"
    common = ["eval", "concepts", "--checkpoint", str(stored), "--data", "synthetic:4",
              "--no-baselines", "--out", str(out)]  # fmt: skip
    assert main(common) == 0
    assert json.loads(out.read_text())["settings"] == STORED
    assert main([*common, "--layer", "-1", "--facet", "tokens"]) == 0
    assert json.loads(out.read_text())["settings"] == {**STORED, "layer": -1, "facet": "tokens"}


@pytest.mark.parametrize(
    ("bad", "named"),
    [({"layer": 2}, "default_layer"), ({"facet": "values"}, "default_facet"),
     ({"resolution": "big"}, "default_resolution")],
)  # fmt: skip
def test_bad_stored_defaults_are_ignored_with_a_warning(
    smoke_export: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: dict, named: str
) -> None:
    path = tmp_path / "bad.safetensors"
    shutil.copy(smoke_export, path)
    store_defaults(path, {"resolution": 40, **bad})
    with caplog.at_level(logging.WARNING, logger="mcssl"):
        enc = load_encoder(path)
    assert enc.defaults == ({} if "resolution" in bad else {"resolution": 40})
    (msg,) = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert named in msg and "expected" in msg and "\n" not in msg


def test_the_app_starts_with_the_stored_defaults_and_keeps_the_users_choice(
    stored: Path, smoke_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(stored))
    monkeypatch.setenv("MCSSL_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.sidebar.select_slider(key="res").value == 48
    assert at.sidebar.number_input(key="layer").value == 0
    assert at.sidebar.radio(key="facet").value == "keys"
    facts = at.sidebar.get("table")[0].value
    assert "resolution 48, layer 0, facet keys" in facts.to_string()
    at.sidebar.select_slider(key="res").set_value(112)
    at.sidebar.radio(key="facet").set_value("tokens").run()  # the user's choice stays
    assert not at.exception
    assert at.sidebar.select_slider(key="res").value == 112
    assert at.sidebar.radio(key="facet").value == "tokens"
    assert at.sidebar.number_input(key="layer").value == 0
    facet = at.sidebar.radio(key="facet")  # the smoke model has a head: the third facet too
    assert facet.options == ["block output tokens", "attention keys", "keys + pseudo-concepts"]
    facet.set_value("keys+concepts").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert [c for im in at.get("image") for c in im.captions if c == "k=4"]  # masks drawn

    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(smoke_export))  # nothing stored
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["res"] = 112
    at.run()
    assert not at.exception
    assert at.sidebar.number_input(key="layer").value == -1
    assert at.sidebar.radio(key="facet").value == "tokens"
    assert "none" in at.sidebar.get("table")[0].value.to_string()
