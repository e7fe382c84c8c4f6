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


def test_broken_checkpoints_say_what_is_wrong(smoke_export: Path, tmp_path: Path) -> None:
    from checkpoint_corpus import bad_checkpoints

    corpus = bad_checkpoints(tmp_path, smoke_export)
    reasons = {
        "missing": "not found",
        "folder": "a folder without last.pt",
        "empty.pt": "the file is empty",
        "empty.safetensors": "not a readable safetensors file (header too small)",
        "random.pt": "not a PyTorch checkpoint",
        "random.safetensors": "not a readable safetensors file",
        "text.pt": "not a PyTorch checkpoint",
        "text.safetensors": "not a readable safetensors file",
        "truncated.pt": "truncated or damaged",
        "truncated.safetensors": "not a readable safetensors file",
        "bad_header.safetensors": "invalid JSON in header",
        "foreign.pt": "refusing to unpickle",
        "foreign_zip.pt": "refusing to unpickle",
        "wrong_tensors.safetensors": "not a ViT state dict",
        "wrong_tensors.pt": "not a ViT state dict",
        "a_list.pt": "not a state dict or checkpoint (got list)",
    }
    assert set(reasons) == set(corpus)
    for name, path in corpus.items():
        with pytest.raises(EncoderError) as e:
            load_encoder(path)
        msg = str(e.value)
        assert "\n" not in msg and reasons[name] in msg and "expected an mcssl export" in msg, msg


def test_bf16_token_features_match_fp32(smoke_export: Path) -> None:
    """The explorer runs in bf16 where the hardware has it: per-token cosine >= 0.99 against
    fp32, the same grid, probabilities close; `precision=fp32` is the switch back."""
    import torch

    from mcssl.explore.features import FeatureExtractor, Settings, compute_dtype
    from mcssl.images import sample_photos

    enc = load_encoder(smoke_export)
    photos = list(sample_photos().values())[:4]
    fp32 = FeatureExtractor(enc, Settings(resolution=96, precision="fp32"))
    bf16 = FeatureExtractor(enc, Settings(resolution=96, precision="bf16"))
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert compute_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)
    assert enc.backbone.cls_token.dtype == torch.float32  # the shared encoder is not changed
    for a, b in zip(fp32(photos), bf16(photos), strict=True):
        assert a.grid == b.grid and a.tokens.dtype == b.tokens.dtype == np.float32
        cos = (a.tokens * b.tokens).sum(1) / (
            np.linalg.norm(a.tokens, axis=1) * np.linalg.norm(b.tokens, axis=1)
        )
        assert cos.min() >= 0.99, cos.min()
        assert not np.array_equal(a.tokens, b.tokens)  # bf16 really ran
        assert np.abs(a.probs - b.probs).sum(1).max() < 0.2  # L1 between the distributions
    with pytest.raises(ValueError, match="precision must be one of"):
        FeatureExtractor(enc, Settings(precision="fp16"))
