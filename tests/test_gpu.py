"""CUDA checks (run with `make test-gpu` on a GPU machine; deselected by default).

Two checks also run on the CPU in the default suite (unmarked parameters): bf16 autocast seen
by hooks (run.precision=bf16), and the CPU/device one-step comparison against itself (exact),
so the logic of the GPU versions is exercised where no GPU is available."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcssl.config import load_config
from mcssl.images import texture_map
from mcssl.train import Trainer, train
from mcssl.train.gmml import GMMLParams, gmml_corrupt

GPU = pytest.mark.gpu


def require_cuda() -> None:
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"


@GPU
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


@GPU
def test_texture_map_on_cuda_matches_the_cpu() -> None:
    require_cuda()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    got = texture_map(x.cuda(), 8)
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), texture_map(x, 8), atol=1e-4)


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "device,precision", [("cpu", "bf16"), pytest.param("cuda", "auto", marks=GPU)]
)
def test_bf16_autocast_is_in_use(tmp_path: Path, device: str, precision: str) -> None:
    """run.precision=auto on a bf16 GPU (bf16 on the CPU): the matmuls run in bf16 (seen by
    hooks on the real layers), the weights stay fp32, the losses come out fp32 and finite."""
    if device == "cuda":
        require_cuda()
    cfg = load_config("smoke", [f"run.device={device}", f"run.precision={precision}", *FAST])
    tr = Trainer(cfg, tmp_path / "run")
    assert tr.amp_dtype == torch.bfloat16
    dtypes: dict[str, torch.dtype] = {}

    def keep(name: str):
        def hook(module, args, out) -> None:  # returns None: the output is left as it is
            dtypes[name] = out.dtype

        return hook

    tr.student.backbone.blocks[0].attn.qkv.register_forward_hook(keep("student qkv"))
    tr.student.concept_head.mlp[0].register_forward_hook(keep("student head"))
    tr.teacher.backbone.blocks[-1].mlp.fc1.register_forward_hook(keep("teacher fc1"))
    out = tr.train_step(next(iter_batches(tr)))
    assert dtypes == dict.fromkeys(dtypes, torch.bfloat16) and len(dtypes) == 3, dtypes
    assert all(p.dtype == torch.float32 for p in tr.student.parameters())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values()), out


@GPU
def test_short_run_on_cuda_bf16_lowers_both_losses(tmp_path: Path) -> None:
    """The CPU test's run (tests/test_train.py) on the GPU in bf16: the same margins."""
    require_cuda()
    over = ["run.device=cuda", "run.precision=auto", "data.workers=2", "optim.epochs=8",
            "optim.base_lr=0.02", "run.log_every=9", "run.preview_every=0"]  # fmt: skip
    summary = train(load_config("smoke", over), tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert summary["steps"] == 72
    assert all(r["gpu_mem_gb"] > 0 for r in rows)
    assert all(r["loss_concept"] > 0 and r["loss_recon"] > 0 for r in rows)
    first, last = rows[:2], rows[-2:]

    def mean(rs: list[dict], k: str) -> float:
        return sum(r[k] for r in rs) / len(rs)

    print({k: (mean(first, k), mean(last, k)) for k in ("loss_recon", "loss_concept")})
    assert mean(last, "loss_recon") < 0.92 * mean(first, "loss_recon")
    assert mean(last, "loss_concept") < 0.92 * mean(first, "loss_concept")
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["teacher"].values())


@GPU
def test_one_step_on_cpu_and_cuda_agree(tmp_path: Path) -> None:
    """Same seed, same batch, fp32 without TF32: losses, gradients and the teacher after one
    step agree between the CPU and the GPU. Tolerances set before any GPU run (rel 1e-4 on
    losses, 1e-3 on each gradient's norm of difference, 1e-5 on the teacher); the measured
    values are printed (pytest -s) for docs/RESULTS.md."""
    require_cuda()
    diffs = compare_one_step(tmp_path, "cuda")
    print("cpu vs cuda, one step:", diffs)
    assert diffs["loss"] < 1e-4 and diffs["grad"] < 1e-3 and diffs["teacher"] < 1e-5, diffs


def test_one_step_comparison_is_exact_cpu_against_cpu(tmp_path: Path) -> None:
    """The comparison above, device = CPU: two fresh trainers agree bit for bit (so on a GPU
    any difference is the device's, and the helper compares what it claims to)."""
    assert compare_one_step(tmp_path, "cpu") == {"loss": 0.0, "grad": 0.0, "teacher": 0.0}


# ---- helpers ---------------------------------------------------------------------------------

# warm-up off (the first step moves the weights), GMML off: its random numbers differ by device
FAST = ["optim.warmup_epochs=0", "optim.base_lr=0.1", "run.log_every=100", "run.preview_every=0"]


def iter_batches(tr: Trainer):
    while True:
        for raw in tr.data.loader:
            yield tr.data.views(raw, tr.step, tr.dist.device)


def compare_one_step(tmp_path: Path, device: str) -> dict[str, float]:
    """One fp32 step of the smoke recipe on the CPU and on ``device`` from the same batch ->
    largest relative loss difference, largest per-parameter relative gradient difference
    (norm of the difference / norm), largest teacher weight difference."""
    over = [*FAST, "run.precision=fp32", "gmml.ratio=[0.0,0.0]"]
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        a = Trainer(load_config("smoke", [*over, "run.device=cpu"]), tmp_path / "cpu")
        b = Trainer(load_config("smoke", [*over, f"run.device={device}"]), tmp_path / "dev")
        batch = next(iter_batches(a))
        la, lb = a.train_step(batch), b.train_step(batch)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    loss = max(abs(float(la[k]) - float(lb[k])) / abs(float(la[k])) for k in la)
    grad = 0.0
    for (name, p), q in zip(a.student.named_parameters(), b.student.parameters(), strict=True):
        if p.grad is None:
            assert q.grad is None, name
            continue
        d = (p.grad - q.grad.cpu()).norm() / p.grad.norm().clamp_min(1e-12)
        grad = max(grad, float(d))
    tb = b.teacher.state_dict()
    teacher = max(float((v - tb[k].cpu()).abs().max()) for k, v in a.teacher.state_dict().items())
    return {"loss": loss, "grad": grad, "teacher": teacher}


@GPU
def test_compile_on_cuda(tmp_path: Path) -> None:
    require_cuda()
    cfg = load_config("smoke", ["run.device=cuda", "run.compile=true", "optim.epochs=1"])
    assert train(cfg, tmp_path / "run")["steps"] == 9


@GPU
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
