"""CUDA checks (run with `make test-gpu` on a GPU machine; deselected by default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcssl.config import load_config
from mcssl.train import train
from mcssl.train.gmml import GMMLParams, gmml_corrupt

pytestmark = pytest.mark.gpu


def require_cuda() -> None:
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"


def test_gmml_on_cuda_is_seeded_and_within_ratio() -> None:
    require_cuda()
    x = torch.randn(16, 3, 224, 224, device="cuda")
    p = GMMLParams(ratio=(0.4, 0.8))
    g1 = torch.Generator(device="cuda").manual_seed(1)
    g2 = torch.Generator(device="cuda").manual_seed(1)
    (c1, m1), (c2, m2) = gmml_corrupt(x, 16, p, g1), gmml_corrupt(x, 16, p, g2)
    assert torch.equal(c1, c2) and torch.equal(m1, m2)
    frac = m1.float().mean((1, 2))
    assert bool(((frac >= 0.4 - 1 / 196) & (frac <= 0.8 + 1 / 196)).all())


def test_smoke_training_on_cuda_bf16(tmp_path: Path) -> None:
    require_cuda()
    cfg = load_config("smoke", ["run.device=cuda", "run.precision=auto", "data.workers=2"])
    summary = train(cfg, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 18
    assert all(r["gpu_mem_gb"] > 0 for r in rows)
    assert rows[-1]["loss"] == rows[-1]["loss"]  # finite, not NaN
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["teacher"].values())


def test_compile_on_cuda(tmp_path: Path) -> None:
    require_cuda()
    cfg = load_config("smoke", ["run.device=cuda", "run.compile=true", "optim.epochs=1"])
    assert train(cfg, tmp_path / "run")["steps"] == 9


def test_nvjpeg_decode_matches_the_cpu_and_device_views_run(tmp_path: Path) -> None:
    """The device pipeline on CUDA: JPEG bytes from the workers, nvjpeg, batched views."""
    require_cuda()
    import numpy as np

    from mcssl.images import load_rgb, sample_photos
    from mcssl.train.data import RawImages, _decode_jpegs, build_data

    for name, img in sample_photos().items():
        img.save(tmp_path / f"{name}.jpg", quality=90)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cfg = load_config("smoke", [f"data.path={tmp_path}", "data.pipeline=device"])
    bundle = build_data(cfg, 0, 1, cuda=True)
    assert isinstance(bundle.loader.dataset, RawImages) and bundle.loader.dataset.jpeg_bytes
    path = sorted(tmp_path.glob("*.jpg"))[1]
    raw = torch.from_numpy(np.fromfile(path, dtype=np.uint8))
    (gpu,) = _decode_jpegs([raw], torch.device("cuda"))
    cpu = torch.from_numpy(np.array(load_rgb(path))).permute(2, 0, 1)
    # decoders differ in IDCT and chroma upsampling by a few levels, not more
    assert gpu.shape == cpu.shape and (gpu.cpu().float() - cpu.float()).abs().mean() < 3
    views = bundle.views(next(iter(bundle.loader)), 0, torch.device("cuda"))
    assert views["global"][0].shape == (8, 3, 32, 32) and views["global"][0].is_cuda
    over = [f"data.path={tmp_path}", "data.pipeline=device", "run.device=cuda", "optim.epochs=1"]
    summary = train(load_config("smoke", over), tmp_path / "r")
    assert summary["steps"] == 10 and summary["skipped_images"] >= 1  # 10 files x 8 // 8
