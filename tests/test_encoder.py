"""Loading encoders from every supported checkpoint layout, strictly and without pickle."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from mcssl.checkpoint import export_teacher
from mcssl.config import load_config
from mcssl.explore.encoder import EncoderError, load_encoder
from mcssl.models import Student, Teacher


@pytest.fixture
def run_dir(smoke_run: Path) -> Path:
    return smoke_run


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=64,
        depth=2,
        dynamic_img_size=True,
    ).eval()


def same_features(enc, model: torch.nn.Module, size=(64, 96)) -> None:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.forward_features(x)[:, model.num_prefix_tokens :]
    torch.testing.assert_close(enc.tokens(x), want, rtol=0, atol=1e-5)


def ref_head(dim: int, k: int, hidden: int = 32, bottleneck: int = 16) -> dict:
    g = torch.Generator().manual_seed(2)
    return {
        "head.mlp.0.weight": torch.randn(hidden, dim, generator=g) * 0.02,
        "head.mlp.0.bias": torch.zeros(hidden),
        "head.mlp.2.weight": torch.randn(hidden, hidden, generator=g) * 0.02,
        "head.mlp.2.bias": torch.zeros(hidden),
        "head.mlp.4.weight": torch.randn(bottleneck, hidden, generator=g) * 0.02,
        "head.mlp.4.bias": torch.zeros(bottleneck),
        "head.last_layer.weight_g": torch.ones(k, 1),
        "head.last_layer.weight_v": torch.randn(k, bottleneck, generator=g),
        "head.data_layer.weight_g": torch.ones(k, 1),
        "head.data_layer.weight_v": torch.randn(k, bottleneck, generator=g),
    }


def test_our_export_run_folder_and_last_pt_agree(run_dir: Path, tmp_path: Path) -> None:
    export_teacher(run_dir, tmp_path / "t.safetensors")
    encs = [load_encoder(p) for p in (tmp_path / "t.safetensors", run_dir, run_dir / "last.pt")]
    state = torch.load(run_dir / "last.pt", weights_only=True)
    cfg = load_config("smoke")
    teacher = Teacher(Student(cfg.model))
    teacher.load_state_dict(state["teacher"])
    for enc in encs:
        assert enc.has_concepts and enc.patch_size == 8 and enc.info["num_concepts"] == "64"
        same_features(enc, teacher.backbone, (32, 48))
        assert torch.equal(enc.center, state["patch_loss"]["center"])
        p = enc.concept_probs(enc.tokens(torch.zeros(1, 3, 32, 32)))
        assert p.shape == (1, 16, 64)
        torch.testing.assert_close(p.sum(-1), torch.ones(1, 16))
    assert encs[0].digest != encs[1].digest  # different files, different cache keys


def test_reference_mcssl_layout_matches_timm(vit: torch.nn.Module, tmp_path: Path) -> None:
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    teacher |= ref_head(384, 10)
    teacher["head_recons.0.weight"] = torch.zeros(3, 3)  # the unused reconstruction head
    center = torch.randn(1, 10)
    ckpt = {
        "teacher": teacher,
        "student": {},
        "epoch": 3,
        "calc_loss": {"center": torch.zeros(1, 10), "center_data": center},
        "args": argparse.Namespace(teacher_temp=0.07, arch="vit_small"),
    }
    torch.save(ckpt, tmp_path / "ref.pth")
    enc = load_encoder(tmp_path / "ref.pth")
    same_features(enc, vit)
    assert enc.has_concepts and enc.teacher_temp == 0.07
    assert torch.equal(enc.center, center.view(-1))
    assert enc.info["format"] == "reference MC-SSL"
    tokens = enc.tokens(torch.randn(1, 3, 64, 64))
    logits = enc.head(tokens)  # data_layer -> patch_layer
    v = teacher["head.data_layer.weight_v"]
    h = enc.head.mlp(tokens)
    want = torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(v, dim=1).T
    torch.testing.assert_close(logits, want)


def test_dino_layout_matches_timm_and_has_no_concepts(vit, tmp_path: Path) -> None:
    teacher = {f"module.backbone.{k}": v for k, v in vit.state_dict().items()}
    teacher |= {
        k.replace("head.", "module.head.", 1): v
        for k, v in ref_head(384, 10).items()
        if "data_layer" not in k
    }
    torch.save(
        {"teacher": teacher, "args": argparse.Namespace(arch="vit_small")}, tmp_path / "dino.pth"
    )
    enc = load_encoder(tmp_path / "dino.pth")
    same_features(enc, vit)
    assert not enc.has_concepts and enc.info["format"] == "DINO teacher"
    with pytest.raises(EncoderError, match="pseudo-concepts are unavailable"):
        enc.concept_probs(torch.zeros(1, 4, 384))


def test_ibot_and_plain_timm_state_dicts(vit, tmp_path: Path) -> None:
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    teacher["backbone.masked_embed"] = torch.zeros(384)
    teacher["head.last_layer2.weight_v"] = torch.zeros(5, 16)
    teacher["head.last_layer2.weight_g"] = torch.ones(5, 1)
    torch.save({"teacher": teacher}, tmp_path / "ibot.pth")
    enc = load_encoder(tmp_path / "ibot.pth")
    assert enc.info["format"] == "iBOT teacher"
    same_features(enc, vit)
    plain = dict(vit.state_dict()) | {"head.weight": torch.zeros(1000, 384)}
    torch.save({"model": plain}, tmp_path / "plain.pth")
    same_features(load_encoder(tmp_path / "plain.pth"), vit)


def test_key_mismatch_is_an_error_naming_the_keys(vit, tmp_path: Path) -> None:
    sd = dict(vit.state_dict())
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(EncoderError) as e:
        load_encoder(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "missing blocks.1.mlp.fc2.bias" in msg and "unexpected blocks.1.extra.weight" in msg
    assert "\n" not in msg


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/mcssl_pwned_marker")


def test_crafted_pickle_is_refused(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"teacher": Evil()}, f)
    torch.save({"model": {"x": Evil()}}, tmp_path / "evil2.pt")
    for p in (path, tmp_path / "evil2.pt"):
        with pytest.raises(EncoderError, match="refusing to unpickle"):
            load_encoder(p)
    assert not MARKER.exists()


def test_missing_default_and_missing_file(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(tmp_path / "nope.safetensors"))
    with pytest.raises(EncoderError, match="bundled default checkpoint .* is missing"):
        load_encoder("default")
    with pytest.raises(EncoderError, match="not found"):
        load_encoder(tmp_path / "missing.pt")


def test_feature_extractor_layers_aspect_and_cache(run_dir: Path) -> None:
    from PIL import Image

    from mcssl.explore.features import FeatureExtractor, Settings

    enc = load_encoder(run_dir)
    img = Image.new("RGB", (120, 60), "white")
    img.paste((200, 30, 30), (0, 0, 60, 60))
    last = FeatureExtractor(enc, Settings(resolution=32))([img])[0]
    first = FeatureExtractor(enc, Settings(resolution=32, layer=0))([img])[0]
    assert last.grid == first.grid == (4, 8) and last.input_size == (32, 64)  # aspect kept
    assert last.tokens.shape == first.tokens.shape == (32, 64)
    assert not np.allclose(last.tokens, first.tokens)
    assert first.probs is not None and np.allclose(first.probs, last.probs)  # from last block
    ex = FeatureExtractor(enc, Settings(resolution=32))
    a, b = ex([img]), ex([img.copy()])
    assert a[0] is b[0] and len(ex.cache) == 1  # same pixels: a cache hit
