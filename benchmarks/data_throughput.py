"""Data-loader images/s on JPEG files, alone (no model), against the model's images/s.

    python benchmarks/make_jpegs.py /tmp/jpegs -n 512
    python benchmarks/data_throughput.py --data-dir /tmp/jpegs [--workers 0 1 2] [--config NAME]

Plain path: the training loader exactly as `mcssl train` builds it (PIL decode + SiT
augmentations in worker processes). On a CUDA machine it also times the GPU decode path
(torchvision.io.decode_jpeg on the device, batched, then a batched resize): the ceiling of a
GPU-side pipeline. The model figure comes from the same machine, same run: one training step
of the configured model on a synthetic batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mcssl.config import load_config
from mcssl.data import build_data
from mcssl.train import Trainer


def loader_rate(cfg, batches: int) -> float:
    bundle = build_data(cfg, rank=0, world=1, pin_memory=torch.cuda.is_available())
    it = iter(bundle.loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        b = next(it)
        n += b["global"][0].shape[0]
    return n / (time.perf_counter() - t)


def gpu_decode_rate(paths: list[Path], size: int, batch: int) -> float | None:
    if not torch.cuda.is_available():
        return None
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2.functional import resize

    data = [read_file(str(p)) for p in paths[: batch * 4]]
    torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(data), batch):
        imgs = decode_jpeg(data[i : i + batch], device="cuda")
        torch.stack([resize(im, [size, size], antialias=True) for im in imgs])
    torch.cuda.synchronize()
    return len(data) / (time.perf_counter() - t)


def model_rate(cfg, out: Path, steps: int) -> float:
    tr = Trainer(cfg, out)
    dev = tr.dist.device
    b = cfg.optim.batch_size
    x = torch.randn(b, 3, cfg.model.img_size, cfg.model.img_size)
    batch = {"global": [x] * cfg.data.global_crops, "local": [], "failed": 0}
    tr.train_step(batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        tr.train_step(batch)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * b / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--config", default="paper_vits16")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--model-steps", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    base = [f"data.path={args.data_dir}", "run.preview_every=0", "run.monitor_every=0"]
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "config": args.config,
        "plain_loader_images_per_s": {},
    }
    for w in args.workers:
        cfg = load_config(args.config, base + [f"data.workers={w}"] + args.overrides)
        result["plain_loader_images_per_s"][w] = round(loader_rate(cfg, args.batches), 1)
    cfg = load_config(args.config, base + ["data.workers=0"] + args.overrides)
    paths = sorted(Path(args.data_dir).glob("*.jpg"))
    gpu = gpu_decode_rate(paths, cfg.model.img_size, cfg.optim.batch_size)
    result["gpu_decode_images_per_s"] = None if gpu is None else round(gpu, 1)
    with tempfile.TemporaryDirectory() as tmp:
        result["model_images_per_s"] = round(model_rate(cfg, Path(tmp), args.model_steps), 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
