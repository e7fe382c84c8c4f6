"""Data-loader images/s on JPEG files, alone (no model), against the model's images/s.

    python benchmarks/make_jpegs.py /tmp/jpegs -n 512
    python benchmarks/data_throughput.py --data-dir /tmp/jpegs [--workers 0 1 2] [--config NAME]
        [--pipelines plain device] [--json out.json] [key=value overrides]

Every path is the training loader exactly as `mcssl train` builds it, views included:
- plain: PIL decode + SiT augmentations in the worker processes (`data.pipeline=plain`);
- device: workers only read (JPEG bytes on CUDA, decoded there by nvjpeg; decoded images on
  a CPU), the augmentations run batched on the device (`data.pipeline=device`);
- both again on a pre-resized cache of the same files (`mcssl cache`, `data.path=cache:...`),
  built once here (its build time is reported).
The model figure comes from the same machine, same run: training steps of the configured
model on a synthetic batch.
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
from mcssl.train import Trainer
from mcssl.train.data import build_data
from mcssl.train.imagecache import build_cache


def loader_rate(cfg, batches: int) -> float:
    """Images/s of the training views (loader + the device part of the pipeline)."""
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    bundle = build_data(cfg, rank=0, world=1, cuda=cuda)
    it = iter(bundle.loader)
    bundle.views(next(it), 0, dev)  # worker start-up and CUDA warm-up are not throughput
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    n = 0
    for step in range(batches):
        b = bundle.views(next(it), step + 1, dev)
        n += b["global"][0].shape[0]
    if cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


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
    ap.add_argument("--pipelines", nargs="+", default=["plain", "device"])
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    base = [f"data.path={args.data_dir}", "run.preview_every=0", "run.monitor_every=0"]
    result: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "config": args.config,
        "images_per_s": {},
    }
    cfg = load_config(args.config, base + args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        size = cfg.model.img_size * 8 // 7  # 256 for 224 crops
        info = build_cache(args.data_dir, Path(tmp) / "cache.npy", size, max(args.workers))
        result["cache_build"] = {k: info[k] for k in ("count", "size", "seconds")}
        sources = {"jpeg": args.data_dir, "cache": f"cache:{tmp}/cache.npy"}
        for pipeline in args.pipelines:
            for name, path in sources.items():
                for w in args.workers:
                    over = [f"data.path={path}", f"data.pipeline={pipeline}", f"data.workers={w}"]
                    rate = loader_rate(load_config(args.config, base + args.overrides + over),
                                       args.batches)  # fmt: skip
                    key = f"{pipeline} {name} workers={w}"
                    result["images_per_s"][key] = round(rate, 1)
                    print(f"{key}: {rate:.1f} images/s", flush=True)
        result["model_images_per_s"] = round(model_rate(cfg, Path(tmp) / "m", args.model_steps), 1)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
