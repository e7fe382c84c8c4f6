"""Training throughput and MFU of a full MC-SSL0.0 step (and, optionally, of plain timm ViT).

The step measured is ``mcssl.train.Trainer.train_step`` itself, on a real ``Trainer`` built
from ``mcssl.config.load_config(recipe, overrides)``: GMML corruption, teacher forward,
student forward, losses, backward, gradient clipping, AdamW, EMA and centre update. Batches
are synthetic tensors unless ``--data-dir`` is given, which also measures the real
DataLoader on image files (the loader alone, and the step fed by the loader).

Reported per case: step time (median and mean), images/s, model FLOPs per step (counted by
``torch.utils.flop_counter.FlopCounterMode`` over one full step: student forward+backward,
teacher forward), achieved FLOP/s, the dense-matmul peak measured in the same run (same
device and dtype, best of several) and MFU = achieved / peak; GMML time per step (timed
alone on the same batch) and its share of the step; peak memory on CUDA.

Default (no arguments): the CPU goal case, ViT-Tiny/8 at 64 px, batch 32, fp32, K = 8192
and the paper's head sizes (2048 hidden, 256 bottleneck), on top of the demo_cpu recipe.

    python benchmarks/train_throughput.py                       # CPU goal case
    python benchmarks/train_throughput.py --baseline            # + plain timm ViT training
    python benchmarks/train_throughput.py --device cuda --precision bf16 \\
        --recipe paper_vits16 --arch vit_small_patch16_224 --patch 16 --img 224 --batch 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mcssl.train.loop as mtrain
from mcssl.config import load_config
from mcssl.train.gmml import gmml_corrupt
from mcssl.train.loop import Trainer, resolve_precision
from mcssl.train.sources import resolve_items


# ---- timing helpers ------------------------------------------------------------------------
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(fn: Callable[[], Any], n: int, dev: torch.device) -> dict[str, Any]:
    """Runs ``fn`` n times -> per-step seconds (CUDA events on GPU, so no per-step stall)
    and the wall time of the whole run (synchronised at both ends)."""
    sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    if dev.type == "cuda":
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        ev[0].record()
        for i in range(n):
            fn()
            ev[i + 1].record()
        sync(dev)
        per = [ev[i].elapsed_time(ev[i + 1]) / 1e3 for i in range(n)]
    else:
        per, last = [], t0
        for _ in range(n):
            fn()
            now = time.perf_counter()
            per.append(now - last)
            last = now
    wall = time.perf_counter() - t0
    # CPU time of this process over (wall x threads): well under 1 on a CPU run means another
    # process took cores during the timing
    use = (time.process_time() - c0) / (wall * torch.get_num_threads())
    return {"per_step_s": per, "median_s": statistics.median(per), "mean_s": wall / n,
            "cpu_use": use}  # fmt: skip


def matmul_peak(dev: torch.device, dtype: torch.dtype, sizes: list[int], reps: int) -> dict:
    """Best FLOP/s of a square matmul (C = A @ B, 2 n^3 FLOPs) over sizes and repetitions."""
    best: dict[str, Any] = {"flops_per_s": 0.0}
    for n in sizes:
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        out = torch.empty(n, n, device=dev, dtype=dtype)
        for _ in range(2 if dev.type == "cpu" else 5):
            torch.mm(a, b, out=out)
        inner = 1 if dev.type == "cpu" else max(1, int(2e12 // (2 * n**3)) or 1)
        for _ in range(reps):
            sync(dev)
            t = time.perf_counter()
            for _ in range(inner):
                torch.mm(a, b, out=out)
            sync(dev)
            rate = 2 * n**3 * inner / (time.perf_counter() - t)
            if rate > best["flops_per_s"]:
                best = {"flops_per_s": rate, "n": n}
        del a, b, out
    return best


def _cpu_attention_formulas() -> dict[Any, Callable]:
    """FlopCounterMode has no formula for the CPU flash-attention kernels (it has the CUDA
    ones): give them the same as ``_scaled_dot_product_flash_attention`` (same arguments)."""
    from torch.utils.flop_counter import flop_registry

    aten, out = torch.ops.aten, {}
    for cpu_op, ref in (
        ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention"),
        ("_scaled_dot_product_flash_attention_for_cpu_backward",
         "_scaled_dot_product_flash_attention_backward"),
    ):  # fmt: skip
        op, formula = getattr(aten, cpu_op, None), flop_registry.get(getattr(aten, ref, None))
        if op is None or formula is None or op in flop_registry:
            continue

        def raw(*a, _f=formula, **k):  # already takes tensors (shape-wrapped)
            return _f(*a, **k)

        raw._get_raw = True  # type: ignore[attr-defined]
        out[op] = raw
    return out


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    fc = FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    with fc:
        fn()
    by_op = {str(k): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    return int(fc.get_total_flops()), by_op


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(dev: torch.device) -> dict[str, Any]:
    info = {
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["cuda"] = torch.version.cuda
    return info


# ---- the MC-SSL trainer --------------------------------------------------------------------
def build_trainer(args: argparse.Namespace, out: Path, steps_needed: int) -> Trainer:
    data_path = args.data_dir or "samples"
    n_items = len(resolve_items(data_path)[0])
    repeat = max(1, math.ceil(args.batch * max(steps_needed, 1) / n_items))
    overrides = [
        f"model.arch={args.arch}",
        f"model.patch_size={args.patch}",
        f"model.img_size={args.img}",
        f"model.num_concepts={args.num_concepts}",
        f"model.head_hidden={args.head_hidden}",
        f"model.head_bottleneck={args.head_bottleneck}",
        f"model.recon_hidden={args.recon_hidden}",
        f"model.recon_bottleneck={args.recon_bottleneck}",
        f"optim.batch_size={args.batch}",
        "optim.epochs=1000",  # long schedules: no index past the end
        "optim.freeze_last_layer_epochs=0",  # steady state: the last layer is trained
        f"run.precision={args.precision}",
        f"run.device={args.device}",
        f"run.compile={str(args.compile).lower()}",
        "run.preview_every=0",
        f"data.path={data_path}",
        f"data.workers={args.workers if args.data_dir else 0}",
        f"data.repeat={repeat}",
    ]
    if args.global_crops:
        overrides.append(f"data.global_crops={args.global_crops}")
    cfg = load_config(args.recipe, overrides + list(args.set))
    return Trainer(cfg, out)


def synthetic_batch(tr: Trainer, dev: torch.device) -> dict:
    cfg, g = tr.cfg, torch.Generator().manual_seed(0)
    size, b = cfg.model.img_size, cfg.optim.batch_size
    views = [torch.randn(b, 3, size, size, generator=g) for _ in range(cfg.data.global_crops)]
    local = [
        torch.randn(b, 3, cfg.data.local_size, cfg.data.local_size, generator=g)
        for _ in range(cfg.data.local_crops)
    ]
    to = (lambda t: t.to(dev)) if dev.type == "cuda" else (lambda t: t)
    return {"global": [to(v) for v in views], "local": [to(v) for v in local], "failed": 0}


@contextlib.contextmanager
def eager(tr: Trainer) -> Iterator[None]:
    """FLOPs are counted on the uncompiled modules (same maths; the counter cannot see
    inside compiled graphs)."""
    saved = tr.model, tr.teacher_fwd
    tr.model, tr.teacher_fwd = tr.student, tr.teacher
    try:
        yield
    finally:
        tr.model, tr.teacher_fwd = saved


@contextlib.contextmanager
def phase_timers(tr: Trainer, dev: torch.device, acc: dict[str, float]) -> Iterator[None]:
    """Times the parts of ``train_step`` by wrapping, for this block only, the callables it
    looks up at run time (instance attributes and names in ``mcssl.train``). Backward, the
    parameter-group update and the rest are what is left of the step."""

    def timed(name: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            sync(dev)
            t = time.perf_counter()
            r = fn(*a, **k)
            sync(dev)
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
            return r

        return wrapper

    patches = [
        (mtrain, "gmml_corrupt", "gmml"),
        (tr, "teacher_fwd", "teacher forward"),
        (tr, "model", "student forward"),
        (tr, "_loss_terms", "losses"),
        (mtrain, "combine_losses", "losses"),
        (torch.nn.utils, "clip_grad_norm_", "grad clip"),
        (tr.optimizer, "step", "AdamW step"),
        (tr.optimizer, "zero_grad", "zero_grad"),
        (mtrain, "ema_update", "EMA"),
        (tr.patch_loss, "update_center", "centre update"),
    ]
    saved = []
    for obj, attr, name in patches:
        in_dict = attr in vars(obj)
        saved.append((obj, attr, in_dict, vars(obj).get(attr)))
        setattr(obj, attr, timed(name, getattr(obj, attr)))
    try:
        yield
    finally:
        for obj, attr, in_dict, old in saved:
            if in_dict:
                setattr(obj, attr, old)
            else:
                delattr(obj, attr)


WHAT_IFS = {
    "fused-adamw": "AdamW(fused=True) on every device (the Trainer fuses on CUDA only)",
    "foreach-adamw": "AdamW(foreach=True) (the default on CPU is the per-tensor loop)",
    "lerp-ema": "EMA as one torch._foreach_lerp_ instead of _foreach_mul_ + _foreach_add_",
}


def apply_what_ifs(tr: Trainer, names: list[str]) -> None:
    """Experiments that are NOT the package's code: they size a suggested change by swapping
    a part of the Trainer at run time. Off unless --what-if is given."""
    for name in names:
        if name in ("fused-adamw", "foreach-adamw"):
            old = tr.optimizer
            kw = {"fused": True} if name == "fused-adamw" else {"foreach": True}
            tr.optimizer = torch.optim.AdamW(
                mtrain.param_groups(tr.student), lr=0.0, betas=old.defaults["betas"], **kw
            )
        elif name == "lerp-ema":

            @torch.no_grad()
            def ema_lerp(t_params: list, s_params: list, m: float) -> None:
                torch._foreach_lerp_(t_params, s_params, 1.0 - m)

            mtrain.ema_update = ema_lerp
        else:
            raise SystemExit(f"unknown --what-if {name!r} (known: {', '.join(WHAT_IFS)})")


def run_mcssl(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    extra = args.loader_batches if args.data_dir else 0
    steps_needed = args.warmup + args.steps + 1 + args.breakdown + args.profile + 2 * extra + 8
    t0 = time.perf_counter()
    tr = build_trainer(args, out, steps_needed)
    dev = tr.dist.device
    res: dict[str, Any] = {"case": "mcssl", "init_s": time.perf_counter() - t0}
    cfg = tr.cfg
    views = cfg.optim.batch_size * cfg.data.global_crops
    res["config"] = cfg.to_dict()
    res["views_per_step"] = views
    res["params"] = {
        "student": sum(p.numel() for p in tr.student.parameters()),
        "teacher": sum(p.numel() for p in tr.teacher.parameters()),
    }
    apply_what_ifs(tr, args.what_if)
    res["what_if"] = {k: WHAT_IFS[k] for k in args.what_if}
    batch = synthetic_batch(tr, dev)
    step = lambda: tr.train_step(batch)  # noqa: E731

    for _ in range(args.warmup):
        step()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time_steps(step, args.steps, dev)
    res.update(step_stats(t, views, cfg.optim.batch_size))
    if dev.type == "cuda":
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    with eager(tr):
        res["flops_per_step"], res["flops_by_op"] = count_flops(step)

    # GMML alone, on the same (concatenated) batch and generator
    x = torch.cat([v.to(dev) for v in batch["global"]])
    for _ in range(3):
        gmml_corrupt(x, cfg.model.patch_size, tr.gmml, tr.gen)
    g = time_steps(lambda: gmml_corrupt(x, cfg.model.patch_size, tr.gmml, tr.gen),
                   args.gmml_reps, dev)  # fmt: skip
    res["gmml_s"] = g["median_s"]
    res["gmml_frac_of_step"] = g["median_s"] / res["step_median_s"]

    if args.breakdown:
        acc: dict[str, float] = {}
        with phase_timers(tr, dev, acc):
            tb = time_steps(step, args.breakdown, dev)
        total = tb["mean_s"]
        parts = {k: v / args.breakdown for k, v in acc.items()}
        parts["backward + rest"] = max(0.0, total - sum(parts.values()))
        res["breakdown_s"] = {"step (with timers)": total, **parts}
    if args.profile:
        res["profile_table"] = profile(
            step, args.profile, dev, args.profile_rows, args.profile_shapes
        )
    if args.data_dir:
        res.update(run_loader(tr, args.loader_batches, dev))
    return res


def run_loader(tr: Trainer, n: int, dev: torch.device) -> dict[str, Any]:
    """The real DataLoader on the files of --data-dir: alone, then feeding the step."""
    cfg, res = tr.cfg, {}
    bs, spe = cfg.optim.batch_size, tr.data.steps_per_epoch

    def batches(epoch: int) -> Iterator[dict]:
        while True:
            tr.data.sampler.set_epoch(epoch)
            for k, b in enumerate(tr.data.loader):  # + the device part of data.pipeline=device
                yield tr.data.views(b, epoch * spe + k, dev)
            epoch += 1

    res["loader_workers"] = cfg.data.workers
    res["loader_steps_per_epoch"] = spe
    it = batches(0)
    tw = time.perf_counter()
    next(it)  # worker start-up and the first batch
    res["loader_first_batch_s"] = time.perf_counter() - tw
    for _ in range(cfg.data.workers):  # batches the other workers made meanwhile: not timed
        next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    sync(dev)
    dt = time.perf_counter() - t0
    res["loader_samples_per_s"] = n * bs / dt
    res["loader_images_per_s"] = n * bs * cfg.data.global_crops / dt

    # the step fed by the loader, as Trainer.fit does it
    wait = 0.0
    it = batches(1000)
    next(it)
    tr.train_step(next(it))
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(n):
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        tr.train_step(batch)
    sync(dev)
    dt = time.perf_counter() - t0
    res["with_loader_step_s"] = dt / n
    res["with_loader_images_per_s"] = n * bs * cfg.data.global_crops / dt
    res["with_loader_data_wait_frac"] = wait / dt
    return res


def profile(step: Callable[[], Any], n: int, dev: torch.device, rows: int, shapes: bool) -> str:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts, record_shapes=shapes) as prof:
        for _ in range(n):
            step()
        sync(dev)
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages(group_by_input_shape=shapes).table(sort_by=key, row_limit=rows)


# ---- plain timm ViT baseline ---------------------------------------------------------------
def run_baseline(args: argparse.Namespace, ref: dict) -> dict[str, Any]:
    """Supervised-style timm ViT step on as many images as the MC-SSL student sees:
    forward + cross-entropy on a linear head + backward + AdamW."""
    import timm

    m = ref["config"]["model"]
    dev = torch.device(args.device)
    views = ref["views_per_step"]
    torch.manual_seed(0)
    sizes = {k: m[k] for k in ("embed_dim", "depth", "num_heads") if m[k]}  # as the student's
    model = timm.create_model(
        m["arch"], pretrained=False, num_classes=args.baseline_classes, img_size=m["img_size"],
        patch_size=m["patch_size"], drop_path_rate=m["drop_path"], **sizes,
    ).to(dev)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                            fused=dev.type == "cuda")  # fmt: skip
    fwd = torch.compile(model) if args.compile else model
    amp = resolve_precision(args.precision, dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(views, 3, m["img_size"], m["img_size"], generator=g).to(dev)
    y = torch.randint(0, args.baseline_classes, (views,), generator=g).to(dev)

    def step(f: Callable = fwd) -> None:
        ctx = torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(f(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n_params = sum(p.numel() for p in model.parameters())
    res: dict[str, Any] = {"case": "baseline", "views_per_step": views}
    res["params"] = {"model": n_params}
    for _ in range(args.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t = time_steps(step, args.steps, dev)
    res.update(step_stats(t, views, views))
    if dev.type == "cuda":
        res["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    res["flops_per_step"], res["flops_by_op"] = count_flops(lambda: step(model))
    return res


# ---- reporting -----------------------------------------------------------------------------
def step_stats(t: dict, views: int, samples: int) -> dict[str, Any]:
    return {
        "step_median_s": t["median_s"],
        "step_mean_s": t["mean_s"],
        "step_min_s": min(t["per_step_s"]),
        "per_step_s": t["per_step_s"],
        "images_per_s": views / t["median_s"],
        "images_per_s_mean": views / t["mean_s"],
        "samples_per_s": samples / t["median_s"],
        "cpu_use": t["cpu_use"],
    }


def add_mfu(res: dict, peak: dict) -> None:
    res["achieved_flops_per_s"] = res["flops_per_step"] / res["step_median_s"]
    res["mfu"] = res["achieved_flops_per_s"] / peak["flops_per_s"]
    res["mfu_best_step"] = res["flops_per_step"] / res["step_min_s"] / peak["flops_per_s"]


def fmt_rate(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.0f} "


def print_report(report: dict) -> None:
    peak = report["peak"]
    cases = report["results"]
    rows: list[tuple[str, list[str]]] = [
        ("images/s (median step)", [f"{r['images_per_s']:.2f}" for r in cases]),
        ("images/s (mean step)", [f"{r['images_per_s_mean']:.2f}" for r in cases]),
        ("step time median / min (ms)",
         [f"{r['step_median_s'] * 1e3:.1f} / {r['step_min_s'] * 1e3:.1f}" for r in cases]),
        ("images per step", [str(r["views_per_step"]) for r in cases]),
        ("model FLOPs / step", [fmt_rate(r["flops_per_step"]) for r in cases]),
        ("achieved FLOP/s", [fmt_rate(r["achieved_flops_per_s"]) for r in cases]),
        ("MFU (median step)", [f"{100 * r['mfu']:.1f} %" for r in cases]),
        ("MFU (best step)", [f"{100 * r['mfu_best_step']:.1f} %" for r in cases]),
    ]  # fmt: skip
    opt = [
        ("GMML per step (ms)", "gmml_s", lambda v: f"{v * 1e3:.2f}"),
        ("GMML share of step", "gmml_frac_of_step", lambda v: f"{100 * v:.2f} %"),
        ("peak memory (GiB)", "peak_mem_gb", lambda v: f"{v:.2f}"),
        ("loader alone: images/s", "loader_images_per_s", lambda v: f"{v:.1f}"),
        ("step with loader: images/s", "with_loader_images_per_s", lambda v: f"{v:.2f}"),
        ("step with loader: data wait", "with_loader_data_wait_frac",
         lambda v: f"{100 * v:.1f} %"),
    ]  # fmt: skip
    if report["device"] == "cpu":  # the noise indicator: < ~90 % means a busy machine
        opt.append(("CPU use while timed", "cpu_use", lambda v: f"{100 * v:.0f} %"))
    for label, key, f in opt:
        if any(key in r for r in cases):
            rows.append((label, [f(r[key]) if key in r else "-" for r in cases]))
    w0 = max(len(r[0]) for r in rows)
    ws = [max(len(c["case"]), *(len(r[1][i]) for r in rows)) for i, c in enumerate(cases)]
    m = report["machine"]
    print(f"\ndevice: {report['device']}  ({m.get('gpu', m['cpu'])}, torch {m['torch']}, "
          f"{m['torch_threads']} threads)  precision: {report['precision']}")  # fmt: skip
    runs = ", ".join(fmt_rate(x).strip() for x in report["peak_measurements"])
    print(f"matmul peak: {fmt_rate(peak['flops_per_s'])}FLOP/s ({peak['dtype']}, n={peak['n']}; "
          f"best of the measurements before/between/after the cases: {runs})")  # fmt: skip
    for name, what in cases[0].get("what_if", {}).items():
        print(f"WHAT-IF {name}: {what} (not the package's code)")
    print(f"{'':<{w0}}  " + "  ".join(f"{c['case']:>{w}}" for c, w in zip(cases, ws, strict=True)))
    for label, vals in rows:
        print(f"{label:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, ws, strict=True)))
    for r in cases:
        if "breakdown_s" in r:
            print(f"\n{r['case']} step breakdown (ms, synchronised timers):")
            for k, v in r["breakdown_s"].items():
                share = 100 * v / r["breakdown_s"]["step (with timers)"]
                print(f"  {k:<20} {v * 1e3:9.1f}  {share:5.1f} %")
        if "profile_table" in r:
            print(f"\n{r['case']} profile:\n{r['profile_table']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--recipe", default="demo_cpu", help="base recipe (name or YAML path)")
    p.add_argument("--arch", default="vit_tiny_patch16_224", help="timm ViT name")
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--img", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="optim.batch_size (samples per step)")
    p.add_argument("--global-crops", type=int, default=0,
                   help="data.global_crops (images per sample); 0 = the recipe's")  # fmt: skip
    p.add_argument("--num-concepts", type=int, default=8192, help="K")
    p.add_argument("--head-hidden", type=int, default=2048)
    p.add_argument("--head-bottleneck", type=int, default=256)
    p.add_argument("--recon-hidden", type=int, default=2048)
    p.add_argument("--recon-bottleneck", type=int, default=256)
    p.add_argument("--steps", type=int, default=8, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--compile", action="store_true", help="run.compile=true (torch.compile)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = default")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override, applied last (repeatable)")  # fmt: skip
    p.add_argument("--data-dir", default="", help="also measure the DataLoader on these files")
    p.add_argument("--workers", type=int, default=8, help="data.workers with --data-dir")
    p.add_argument("--loader-batches", type=int, default=20, help="batches timed per loader test")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also measure plain timm ViT training (forward + CE + backward + AdamW)",
    )
    p.add_argument("--baseline-classes", type=int, default=1000)
    p.add_argument("--gmml-reps", type=int, default=0, help="0 = 50 on CPU, 200 on CUDA")
    p.add_argument("--peak-sizes", default="", help="matmul sizes; default 2048 (CPU) or "
                   "4096,8192 (CUDA)")  # fmt: skip
    p.add_argument("--peak-reps", type=int, default=0, help="0 = 6 on CPU, 20 on CUDA")
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="also time the parts of the step over N steps")  # fmt: skip
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also run torch.profiler over N steps and print the top ops")  # fmt: skip
    p.add_argument("--profile-rows", type=int, default=30)
    p.add_argument("--profile-shapes", action="store_true", help="group the profile by shape")
    p.add_argument("--what-if", action="append", default=[], choices=list(WHAT_IFS),
                   help="experiment, not the package's code: " + "; ".join(
                       f"{k}: {v}" for k, v in WHAT_IFS.items()))  # fmt: skip
    p.add_argument("--out", default="", help="Trainer output folder (default: a temp dir)")
    p.add_argument("--json", default="", metavar="PATH", help="write the results as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device available", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    args.gmml_reps = args.gmml_reps or (200 if cuda else 50)
    sizes = [int(s) for s in (args.peak_sizes or ("4096,8192" if cuda else "2048")).split(",")]
    dtype = resolve_precision(args.precision, dev) or torch.float32
    report: dict[str, Any] = {
        "argv": sys.argv,
        "args": vars(args),
        "device": args.device,
        "precision": args.precision,
        "machine": machine_info(dev),
        "results": [],
    }
    peaks: list[dict] = []

    def measure_peak() -> None:
        peaks.append(matmul_peak(dev, dtype, sizes, args.peak_reps or (20 if cuda else 6)))
        if cuda:
            torch.cuda.empty_cache()

    with contextlib.ExitStack() as stack:
        out = Path(args.out or stack.enter_context(tempfile.TemporaryDirectory(prefix="mb-")))
        # the peak is measured before, between and after the cases; MFU uses the best of them
        # (a busy machine lowers a measurement, it never raises one)
        measure_peak()
        try:
            report["results"].append(run_mcssl(args, out))
        except torch.OutOfMemoryError as e:
            print(f"mcssl: out of memory: {str(e).splitlines()[0]}", file=sys.stderr)
            report["results"].append({"case": "mcssl", "error": "out of memory"})
        ref = report["results"][0]
        if args.baseline and "error" not in ref:
            if cuda:
                torch.cuda.empty_cache()
            measure_peak()
            try:
                report["results"].append(run_baseline(args, ref))
            except torch.OutOfMemoryError:
                report["results"].append({"case": "baseline", "error": "out of memory"})
        measure_peak()
    peak = max(peaks, key=lambda p: p["flops_per_s"])
    report["peak"] = {**peak, "dtype": str(dtype).replace("torch.", "")}
    report["peak_measurements"] = [p["flops_per_s"] for p in peaks]
    ok = [r for r in report["results"] if "error" not in r]
    for r in ok:
        add_mfu(r, peak)
    if ok:
        print_report({**report, "results": ok})
    for r in report["results"]:
        if "error" in r:
            print(f"{r['case']}: {r['error']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0 if len(ok) == len(report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
