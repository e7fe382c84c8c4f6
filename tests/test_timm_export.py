"""mcssl export --format timm: a plain timm state dict that timm.create_model loads through
its own pretrained path (offline), giving the same features as our loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open

from mcssl.checkpoint import CheckpointError, export_timm
from mcssl.config import load_config
from mcssl.explore.encoder import load_encoder
from mcssl.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("timm") / "run"
    train(load_config("smoke", ["optim.epochs=1", "run.monitor_every=0"]), out)
    return out


def _timm_model(path: Path) -> torch.nn.Module:
    info = json.loads(path.with_suffix(".json").read_text())
    model = timm.create_model(
        info["model_name"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        **info["kwargs"],
    )
    return model.eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_create_model_loads_the_export_with_our_features(
    run: Path, tmp_path: Path, suffix: str
) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # timm must not reach a hub
    dst = tmp_path / f"teacher{suffix}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mcssl", "export", str(run), "--out", str(dst), "--format"]
    res = subprocess.run([*cmd, "timm"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    model = _timm_model(dst)
    enc = load_encoder(run)
    ours = dict(enc.backbone.state_dict())
    theirs = model.state_dict()
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)  # not random init
    x = torch.randn(2, 3, 48, 40)  # another size than training's 32: dynamic_img_size kept
    with torch.no_grad():
        feats = model.forward_features(x)[:, model.num_prefix_tokens :]
        want = enc.tokens(x)
    assert feats.shape == want.shape == (2, 6 * 5, 64)
    assert torch.allclose(feats, want, atol=1e-5)


def test_timm_export_metadata_and_bad_suffix(run: Path, tmp_path: Path) -> None:
    dst = tmp_path / "t.safetensors"
    info = export_timm(run, dst)
    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["model_name"] == "vit_tiny_patch16_224" == info["model_name"]
    assert json.loads(meta["kwargs"]) == info["kwargs"]
    assert info["kwargs"]["patch_size"] == 8 and info["kwargs"]["embed_dim"] == 64
    assert not any(k.startswith(("backbone.", "head.", "concept_head.")) for k in keys)
    with pytest.raises(CheckpointError, match="safetensors"):
        export_timm(run, tmp_path / "t.npz")
