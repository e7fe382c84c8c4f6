"""End-to-end training: the CLI, DDP with gloo, SIGKILL + resume, export, learning signal."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mcssl.checkpoint import export_teacher
from mcssl.config import load_config
from mcssl.train import Trainer, TrainError, train

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mcssl", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_smoke_cli_writes_run_files(tmp_path: Path) -> None:
    out = tmp_path / "r1"
    res = run_cli("train", "--config", "mcssl/configs/smoke.yaml", "--out", str(out))
    assert res.returncode == 0, res.stderr
    for name in ("last.pt", "config.yaml", "metrics.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    rows = metrics(out)
    assert rows[-1]["step"] == 18  # 2 epochs x (9 photos x repeat 8 // batch 8) steps
    for key in ("lr", "wd", "momentum", "loss", "loss_recon", "loss_concept", "images_per_s"):
        assert all(key in r for r in rows), key
    assert 0.0 <= rows[-1]["data_wait_frac"] <= 1.0
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 18 and state["epoch"] == 2
    assert list((out / "previews").glob("step_*.png"))
    assert "recipe: smoke" in (out / "config.yaml").read_text()


def test_export_loads_without_pickle(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(load_config("smoke", ["optim.epochs=1"]), out)
    dst = tmp_path / "t.safetensors"
    res = run_cli("export", str(out), "--out", str(dst))
    assert res.returncode == 0, res.stderr
    with safe_open(str(dst), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
        center = f.get_tensor("center")
    assert meta["arch"] == "vit_tiny_patch16_224" and meta["patch_size"] == "8"
    assert meta["num_concepts"] == "64" and meta["steps"] == "9"
    assert center.shape == (64,)
    assert not any(k.startswith("recon") for k in keys)  # the teacher has no recon head
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    with safe_open(str(dst), "pt") as f:
        for k, v in state["teacher"].items():
            k2 = k.replace("concept_head.", "head.", 1)
            assert torch.equal(f.get_tensor(k2), v), k
    fp16 = export_teacher(out, tmp_path / "h.safetensors", dtype="fp16")
    assert fp16["dtype"] == "fp16"


def test_ddp_two_ranks_end_identical(tmp_path: Path) -> None:
    out = tmp_path / "r2"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "mcssl",
        "train",
        "--config",
        "mcssl/configs/smoke.yaml",
        "--out",
        str(out),
        "data.repeat=16",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["rank_digests"]) == 2
    assert summary["rank_digests"][0] == summary["rank_digests"][1]
    assert summary["ranks_in_sync"] is True
    # 144 samples split over 2 ranks -> 72 each -> 9 steps/epoch, 2 epochs
    assert summary["steps"] == 18
    # the global batch is 16: the peak lr is scaled by 16/256
    cfg = load_config("smoke")
    peak = max(r["lr"] for r in metrics(out))
    assert peak <= cfg.optim.base_lr * 16 / 256 + 1e-12
    assert peak > cfg.optim.base_lr * 8 / 256


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, min_step: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline:
        if (out / "last.pt").exists() and (out / "metrics.jsonl").exists():
            rows = metrics(out)
            if rows and rows[-1]["step"] >= min_step:
                return
        assert proc.poll() is None, "run finished before it could be killed"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    args = [
        "--config",
        "mcssl/configs/smoke.yaml",
        "optim.epochs=6",
        "run.save_every=3",
        "run.log_every=1",
        "run.preview_every=0",
    ]
    ref = tmp_path / "ref"
    assert run_cli("train", "--out", str(ref), *args).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcssl", "train", "--out", str(out), *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_checkpoint(proc, out, min_step=4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 3 <= killed_at < 54
    res = run_cli("train", "--out", str(out), "--resume", *args)
    assert res.returncode == 0, res.stderr
    a = torch.load(ref / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 54
    for part in ("teacher", "student"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k}"
    assert torch.equal(a["patch_loss"]["center"], b["patch_loss"]["center"])
    steps = [r["step"] for r in metrics(out)]
    assert steps[-1] == 54 and killed_at + 1 in steps


def test_short_run_on_photos_lowers_both_losses(tmp_path: Path) -> None:
    cfg = load_config(
        "smoke", ["optim.epochs=8", "optim.base_lr=0.02", "run.log_every=9", "run.preview_every=0"]
    )
    train(cfg, tmp_path / "run")
    rows = metrics(tmp_path / "run")
    first, last = rows[:2], rows[-2:]

    def mean(rs: list[dict], k: str) -> float:
        return sum(r[k] for r in rs) / len(rs)

    # cross-entropies of distributions are positive (a sign error makes them fall below 0)
    assert all(r["loss_concept"] > 0 and r["loss_recon"] > 0 for r in rows)
    # measured on this CPU: recon 1.07 -> 0.79, concept 3.12 -> 2.59
    assert mean(last, "loss_recon") < 0.92 * mean(first, "loss_recon")
    assert mean(last, "loss_concept") < 0.92 * mean(first, "loss_concept")


@pytest.mark.parametrize("combine", ["fixed", "uncertainty"])
def test_other_loss_combinations_and_reference_options_run(tmp_path: Path, combine: str) -> None:
    over = [
        "optim.epochs=2",
        f"loss.combine={combine}",
        "loss.recon_type=mse",
        "loss.recon_region=corrupted",
        "loss.cls_term=true",
        "data.global_crops=2",
        "data.local_crops=2",
        "data.local_size=16",
        "model.cls_num_concepts=32",
        "loss.warmup_teacher_temp_epochs=1",
        "loss.teacher_temp=0.07",
    ]
    summary = train(load_config("smoke", over), tmp_path / "run")
    rows = metrics(tmp_path / "run")
    assert summary["steps"] == 18
    assert all("loss_cls" in r for r in rows)
    assert rows[0]["teacher_temp"] < 0.07 and rows[-1]["teacher_temp"] == pytest.approx(0.07)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu(tmp_path: Path, precision: str) -> None:
    cfg = load_config("smoke", ["optim.epochs=1", f"run.precision={precision}"])
    summary = train(cfg, tmp_path / "run")
    assert summary["steps"] == 9
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "run"))
    scaler = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # the grad scaler only runs for fp16


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    cfg = load_config("smoke", ["run.save_every=2", "run.log_every=100"])
    trainer = Trainer(cfg, tmp_path / "run")
    real = trainer.patch_loss.forward

    def poisoned(*args, **kwargs):  # fault injection: the 6th step's loss is NaN
        out = real(*args, **kwargs)
        return out * float("nan") if trainer.step == 5 else out

    trainer.patch_loss.forward = poisoned
    with pytest.raises(TrainError, match="non-finite loss by step 6") as e:
        trainer.fit()
    assert "last good state is kept" in str(e.value)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["teacher"].values())
