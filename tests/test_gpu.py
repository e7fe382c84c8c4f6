"""CUDA checks (run with `make test-gpu` on a GPU machine; deselected by default)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcssl.config import load_config
from mcssl.gmml import GMMLParams, gmml_corrupt
from mcssl.train import train

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
