"""The MC-SSL0.0 training loop: schedules, one step, EMA, logging and checkpoints.

Single process, or DDP under torchrun (any number of GPUs / nodes; gloo on CPU).
Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mcssl.checkpoint import atomic_save, load_training_state
from mcssl.config import Config, ConfigError, config_from_dict, save_config
from mcssl.images import denormalise, grey, texture_dim, texture_map
from mcssl.losses import (
    CenteredCrossEntropy,
    MultiViewCrossEntropy,
    combine_losses,
    norm_pix,
    reconstruction_loss,
    soft_cross_entropy,
    texture_loss,
)
from mcssl.models import Student, Teacher, ema_pairs, ema_update
from mcssl.train import distributed, monitor
from mcssl.train.data import build_data
from mcssl.train.device_aug import grey_inputs, mosaic
from mcssl.train.gmml import GMMLParams, gmml_corrupt
from mcssl.train.matching import cross_image_targets, cross_view_loss
from mcssl.train.schedules import cosine_schedule, warmup_constant

log = logging.getLogger(__name__)


# (teacher backbone, step) -> named scores for metrics.jsonl, or images ((H, W, 3) uint8
# arrays, for TensorBoard only); built above this layer (mcssl.evaluation.online)
Monitor = Callable[[torch.nn.Module, int], dict[str, "float | np.ndarray"]]


class TrainError(RuntimeError):
    """Training cannot go on; one-line message for the user."""


@dataclass
class Schedules:
    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray


def build_schedules(cfg: Config, steps_per_epoch: int, world: int) -> Schedules:
    o, total = cfg.optim, cfg.optim.epochs * steps_per_epoch
    peak = o.base_lr * o.batch_size * world / 256  # linear scaling by the total batch
    warm_tt = cfg.loss.warmup_teacher_temp_epochs * steps_per_epoch
    return Schedules(
        lr=cosine_schedule(peak, o.min_lr, total, o.warmup_epochs * steps_per_epoch),
        wd=cosine_schedule(o.weight_decay, o.weight_decay_end, total),
        momentum=cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, total),
        teacher_temp=warmup_constant(
            cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp, total, warm_tt
        ),
    )


def param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: not on biases, norms, gains or loss weights."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or name.endswith("weight_g")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "decay": True}, {"params": no_decay, "decay": False}]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """-> autocast dtype, or None for fp32."""
    if precision == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def prepare_run_dir(out: Path, resume: bool) -> None:
    """Creates RUN_DIR; a clear error if it cannot be written or would be overwritten."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"cannot write to output folder {out}: {e.strerror or e}") from None
    if not resume and (out / "last.pt").exists():
        raise TrainError(
            f"{out} already holds a run (last.pt); add --resume to continue it "
            "or choose another --out"
        )


def summary_writer(folder: Path) -> Any:
    """torch's TensorBoard SummaryWriter into ``folder`` (needs the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError(
            "run.tensorboard=true needs the tensorboard package (pip install tensorboard)"
        ) from None
    return SummaryWriter(str(folder))


class Trainer:
    def __init__(
        self, cfg: Config, out: str | Path, resume: bool = False, monitors: Sequence[Monitor] = ()
    ) -> None:
        self.cfg, self.out, self.monitors = cfg, Path(out), list(monitors)
        self.dist = distributed.setup(cfg.run.device)
        dev = self.dist.device
        self._prepare_run_dir(resume)
        resume_state = self._resume_state() if resume else None
        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.data = build_data(cfg, self.dist.rank, self.dist.world, dev.type == "cuda")
        tex = texture_dim(cfg.model.patch_size) if cfg.shortcut.texture_target else 0
        n_terms = 2 + cfg.loss.cls_term + bool(tex) if cfg.loss.combine == "uncertainty" else 0
        self.student = Student(cfg.model, cfg.loss.cls_term, n_terms, tex).to(dev)
        self.teacher = Teacher(self.student).to(dev)
        lc = cfg.loss
        sc = cfg.shortcut
        self.patch_loss = CenteredCrossEntropy(
            cfg.model.num_concepts,
            lc.student_temp,
            lc.center_momentum,
            sc.sinkhorn_iters,
            sc.image_centring,
        ).to(dev)
        self.cls_loss = None
        if lc.cls_term:
            self.cls_loss = MultiViewCrossEntropy(
                cfg.model.cls_num_concepts, lc.student_temp, lc.center_momentum
            ).to(dev)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.student),
            lr=0.0,
            betas=tuple(cfg.optim.betas),
            fused=dev.type in ("cuda", "cpu"),  # fused AdamW: ~5x faster than the loop on CPU
        )
        self.amp_dtype = resolve_precision(cfg.run.precision, dev)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self.amp_dtype == torch.float16)
        self.sched = build_schedules(cfg, self.data.steps_per_epoch, self.dist.world)
        self.total_steps = len(self.sched.lr)
        self.step = 0
        if resume_state is not None:
            self._load(resume_state)
        self.ema_t, self.ema_s = ema_pairs(self.teacher, self.student)
        self.model, self.teacher_fwd = self._wrap_models()
        self.gmml = GMMLParams(
            ratio=tuple(cfg.gmml.ratio),
            max_block_frac=cfg.gmml.max_block_frac,
            weights=(cfg.gmml.drop_weight, cfg.gmml.replace_weight, cfg.gmml.colour_weight),
            drop_fill=cfg.gmml.drop_fill,
            per_image=cfg.gmml.choose_per == "image",
            replace_ratio=tuple(cfg.gmml.replace_ratio) if cfg.gmml.replace_ratio else None,
        )
        self.gen = torch.Generator(device=dev)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=dev)
        self.grad_stats = torch.zeros(2, device=dev)  # since the last log: sum of norms, clips
        self.skipped_images = 0
        self.stop_requested = False
        self.health: dict[str, float] = {}  # collapse signals of the last logging step
        self.prev_center: torch.Tensor | None = None
        self.collapsed: str | None = None
        self.tb: Any = None  # SummaryWriter on rank 0 with run.tensorboard, while fit() runs

    def _prepare_run_dir(self, resume: bool) -> None:
        """Rank 0 checks the folder; every rank learns the outcome (no rank left waiting)."""
        error = ""
        if self.dist.is_main:
            try:
                prepare_run_dir(self.out, resume)
            except TrainError as e:
                error = str(e)
        error = next((e for e in distributed.all_gather_object(error) if e), "")
        if error:
            raise TrainError(error)

    def _wrap_models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """-> (student as trained: DDP and/or compiled, teacher forward)."""
        model, teacher = self.student, self.teacher
        if self.dist.world > 1:
            dev = self.dist.device
            model = DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        if self.cfg.run.compile:
            model, teacher = torch.compile(model), torch.compile(teacher)
        return model, teacher

    # ---- state -------------------------------------------------------------------------
    def _resume_state(self) -> dict[str, Any]:
        state = load_training_state(self.out / "last.pt")
        old, new = state["config"]["model"], self.cfg.to_dict()["model"]
        diff = sorted(k for k in new if old.get(k) != new[k])
        if diff:
            raise ConfigError(
                f"--resume: model settings differ from the run's: "
                f"{', '.join('model.' + k for k in diff)}"
            )
        return state

    def _load(self, state: dict[str, Any]) -> None:
        try:
            self._load_modules(state)
        except (RuntimeError, KeyError, ValueError) as e:
            msg = " ".join(str(e).split())[:300]
            last = self.out / "last.pt"
            raise TrainError(f"--resume: {last} does not fit this run ({msg})") from None
        self.step = int(state["step"])
        self.skipped_images = int(state.get("skipped_images", 0))
        if self.step > self.total_steps:
            raise TrainError(
                f"checkpoint is at step {self.step}, past this config's {self.total_steps} steps"
            )

    def _load_modules(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.patch_loss.load_state_dict(state["patch_loss"])
        if self.cls_loss is not None:
            self.cls_loss.load_state_dict(state["cls_loss"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "patch_loss": self.patch_loss.state_dict(),
            "cls_loss": self.cls_loss.state_dict() if self.cls_loss is not None else {},
            "step": self.step,
            "epoch": self.step // self.data.steps_per_epoch,
            "skipped_images": self.skipped_images,
            "data": self.data.description,
            "config": self.cfg.to_dict(),
        }

    def save(self, keep_as: str | None = None) -> None:
        self.check_finite()
        if not self.dist.is_main:
            return
        state = self.state_dict()
        atomic_save(state, self.out / "last.pt")
        if keep_as:
            atomic_save(state, self.out / keep_as)

    def check_finite(self) -> None:
        if bool(self.nonfinite):
            last = self.out / "last.pt"
            kept = (
                f"the last good state is kept in {last}" if last.exists() else "no checkpoint yet"
            )
            raise TrainError(
                f"non-finite loss by step {self.step}; stopped, {kept} (try a lower "
                "optim.base_lr, loss.teacher_temp or run.precision=fp32)"
            )

    # ---- one step ----------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    def _loss_terms(self, s: dict, t: dict, x: torch.Tensor, mask: torch.Tensor, tt: float):
        lc = self.cfg.loss
        terms = {
            "recon": reconstruction_loss(s["recon"], x, mask, lc.recon_type, lc.recon_region),
            "concept": self.patch_loss(s["patch_logits"], t["patch_logits"], tt),
        }
        if self.cls_loss is not None:
            terms["cls"] = self.cls_loss(
                s["cls_logits"], t["cls_logits"], tt, self.cfg.data.global_crops
            )
        return terms

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        cfg, sc, i, dev = self.cfg, self.cfg.shortcut, self.step, self.dist.device
        for g in self.optimizer.param_groups:
            g["lr"] = float(self.sched.lr[i])
            g["weight_decay"] = float(self.sched.wd[i]) if g["decay"] else 0.0
        x = torch.cat([v.to(dev, non_blocking=True) for v in batch["global"]])
        local = [v.to(dev, non_blocking=True) for v in batch["local"]]
        # shortcut.student_colour: the student's copy of the crop has colours of its own, and
        # the reconstruction target follows them; else student and teacher share the view
        own = batch.get("student")
        xs = torch.cat([v.to(dev, non_blocking=True) for v in own]) if own else x
        if sc.mosaic:  # the same mosaic for both: tokens stay aligned
            x, xs = mosaic(x), mosaic(xs)
        # a per-step seed keeps corruption reproducible across resumes without saving RNG state
        self.gen.manual_seed(hash((cfg.run.seed, self.dist.rank, i)) & 0x7FFF_FFFF_FFFF)
        corrupted, mask = gmml_corrupt(xs, cfg.model.patch_size, self.gmml, self.gen)
        target = grey(xs) if cfg.model.grey_input else xs  # the model greys its own inputs
        if p := sc.recon_grey:  # luminance only, so no token has to keep hue for the decoder
            target = grey_inputs(xs, torch.rand(len(xs), generator=self.gen, device=dev) < p)
        target = norm_pix(target, cfg.model.patch_size) if sc.norm_pix else target
        if p := sc.teacher_grey:  # hue-free targets; drawn after GMML, which stays put
            x = grey_inputs(x, torch.rand(len(x), generator=self.gen, device=dev) < p)
        tt = float(self.sched.teacher_temp[i])
        with self._autocast():
            t = self.teacher_fwd(x)
            s = self.model(corrupted, local)
            terms = self._loss_terms(s, t, target, mask, tt)
            if w := sc.texture_target:  # the clean student view's texture, weighted here
                tex = texture_map(xs, cfg.model.patch_size, sc.texture_window)
                terms["texture"] = w * texture_loss(s["texture"], tex)
            if sc.cross_view or sc.cross_image:  # the levers' targets, computed once
                p_t = self.patch_loss.teacher_probs(t["patch_logits"], tt)
            if sc.cross_view:  # half token-aligned, half the other crop's location
                boxes = [v.to(dev) for v in batch["boxes"]]
                cross = cross_view_loss(s["patch_logits"], p_t, boxes, cfg.loss.student_temp)
                terms["concept"] = 0.5 * (terms["concept"] + cross)
            if w := sc.cross_image:  # targets from the nearest tokens of other images
                sources = batch["global"][0].shape[0]
                nn_t = cross_image_targets(p_t, t["tokens"], sources, sc.cross_image_centred)
                cross = soft_cross_entropy(s["patch_logits"], nn_t, cfg.loss.student_temp)
                terms["concept"] = (1 - w) * terms["concept"] + w * cross
            weights = {
                "recon": cfg.loss.recon_weight,
                "concept": cfg.loss.concept_weight,
                "cls": cfg.loss.cls_weight,
                "texture": 1.0,
            }
            loss = combine_losses(terms, cfg.loss.combine, weights, self.student.loss_log_vars)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        self.grad_stats += torch.stack(self._clip_gradients())
        if i < cfg.optim.freeze_last_layer_epochs * self.data.steps_per_epoch:
            for p in self.student.concept_head.last_layers(cfg.optim.freeze_last_layer_heads):
                p.grad = None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.ema_t, self.ema_s, float(self.sched.momentum[i]))
        self.patch_loss.update_center(t["patch_logits"])
        if self.cls_loss is not None:
            self.cls_loss.update_center(t["cls_logits"])
        self.nonfinite |= ~torch.isfinite(loss.detach())
        if (i + 1) % cfg.run.log_every == 0 or i + 1 == self.total_steps:
            self._measure_health(s, t, target, mask, tt)
        self.step += 1
        self._last = (xs, corrupted, s["recon"])
        return {"loss": loss.detach(), **{k: v.detach() for k, v in terms.items()}}

    def _clip_gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Clips as ``optim.clip_mode`` says -> (gradient norm before clipping, 1.0 if clipping
        fired else 0.0), as tensors: no device sync."""
        o = self.cfg.optim
        params = [p for p in self.student.parameters() if p.grad is not None]
        if o.clip_grad <= 0:
            total = torch.nn.utils.get_total_norm([p.grad for p in params])
            return total, torch.zeros_like(total)
        if o.clip_mode == "global":
            total = torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
            return total, (total > o.clip_grad).float()
        grads = [p.grad for p in params]  # per_param: each to norm clip_grad (the reference)
        norms = torch._foreach_norm(grads)
        torch._foreach_mul_(grads, [(o.clip_grad / (n + 1e-6)).clamp(max=1.0) for n in norms])
        stacked = torch.stack(norms)
        return torch.linalg.vector_norm(stacked), (stacked > o.clip_grad).any().float()

    def _measure_health(self, s: dict, t: dict, x: torch.Tensor, mask: torch.Tensor, tt: float):
        """Collapse signals at logging steps (a few softmaxes; see mcssl.train.monitor)."""
        p_t = self.patch_loss.teacher_probs(t["patch_logits"], tt)
        center = self.patch_loss.center.detach().float()
        drift = 0.0 if self.prev_center is None else float((center - self.prev_center).norm())
        self.prev_center = center.clone()
        self.health = {
            **monitor.concept_health(p_t, s["patch_logits"].detach()),
            **monitor.recon_split(s["recon"].detach(), x, mask),
            "center_norm": float(center.norm()),
            "center_drift": drift,
        }

    # ---- outputs -----------------------------------------------------------------------
    def _rank_means(self, sums: dict[str, torch.Tensor], n: int) -> dict[str, float]:
        """Per-step means since the last log, averaged over ranks (one all-reduce, which also
        shares the non-finite flag, so every rank stops together)."""
        keys = list(sums)
        dev = self.dist.device
        vals = torch.stack(
            [torch.as_tensor(sums[k], dtype=torch.float32, device=dev) for k in keys]
            + list(self.grad_stats)
            + [self.nonfinite.float()]
        )
        self.grad_stats.zero_()
        if self.dist.world > 1:
            torch.distributed.all_reduce(vals)
            vals /= self.dist.world
        self.nonfinite |= vals[-1] > 0
        names = [f"loss_{k}" if k != "loss" else k for k in keys] + ["grad_norm", "clip_frac"]
        return {k: float(v) / n for k, v in zip(names, vals[:-1].tolist(), strict=True)}

    def write_metrics(self, sums: dict[str, torch.Tensor], n: int, wall: float, wait: float):
        means = self._rank_means(sums, n)
        self.check_finite()
        if not self.dist.is_main:
            return
        i = self.step - 1
        row = {
            "step": self.step,
            "epoch": self.step / self.data.steps_per_epoch,
            "lr": float(self.sched.lr[i]),
            "wd": float(self.sched.wd[i]),
            "momentum": float(self.sched.momentum[i]),
            "teacher_temp": float(self.sched.teacher_temp[i]),
            **means,  # losses, grad_norm (before clipping), clip_frac: means over ranks
            "images_per_s": n * self.cfg.optim.batch_size * self.dist.world / max(wall, 1e-9),
            "data_wait_frac": wait / max(wall, 1e-9),
            "skipped_images": self.skipped_images,
            "time": time.time(),
            **self.health,
        }
        images: dict[str, np.ndarray] = {}
        every = self.cfg.run.monitor_every
        if every and (self.step % every == 0 or self.step == self.total_steps):
            for score in self.monitors:
                for name, value in score(self.teacher.backbone, self.step).items():
                    if isinstance(value, np.ndarray):
                        images[name] = value
                    else:
                        row[name] = value
        kind = monitor.collapse(row)
        row["collapse"] = kind
        if kind and kind != self.collapsed:  # say it once per episode, not every log line
            log.warning("step %d: %s", self.step, monitor.warning(kind))
        self.collapsed = kind
        if self.dist.device.type == "cuda":
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._tensorboard(row, images)

    def _tensorboard(self, row: dict[str, Any], images: dict[str, np.ndarray]) -> None:
        """Every number of a metrics row as a scalar, and the images, at this step."""
        if self.tb is None:
            return
        for name, value in row.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and name not in ("step", "time"):
                self.tb.add_scalar(name, value, self.step)
        for name, img in images.items():
            self.tb.add_image(name, img, self.step, dataformats="HWC")
        self.tb.flush()

    def write_preview(self) -> None:
        """Clean | corrupted | reconstruction for up to 4 images, as one PNG."""
        if not self.dist.is_main:
            return
        x, c, r = (denormalise(t[:4].detach()) for t in self._last)
        rows = torch.cat([torch.cat(list(t), dim=2) for t in (x, c, r)], dim=1)  # (3, 3H, nW)
        arr = (rows.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        (self.out / "previews").mkdir(exist_ok=True)
        Image.fromarray(arr).save(self.out / "previews" / f"step_{self.step:07d}.png")
        self._tensorboard({}, {"preview": arr})

    def write_summary(self, started: float) -> dict[str, Any]:
        digests = distributed.all_gather_object(distributed.params_digest(self.student))
        summary = {
            "steps": self.step,
            "epochs": self.step / self.data.steps_per_epoch,
            "wall_s": time.time() - started,
            "world_size": self.dist.world,
            "skipped_images": sum(distributed.all_gather_object(self.skipped_images)),
            "rank_digests": digests,
            "ranks_in_sync": len(set(digests)) == 1,
            "stopped": self.step < self.total_steps,
        }
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    # ---- the loop ----------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        started = time.time()
        if self.dist.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            desc="train",
        )
        previous = None
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            previous = signal.signal(signal.SIGTERM, self._request_stop)
        if self.dist.is_main and self.cfg.run.tensorboard:
            self.tb = summary_writer(self.out / "tb")
        try:
            self._loop(bar)
        finally:
            bar.close()
            if self.tb is not None:
                self.tb.close()
                self.tb = None
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return self.write_summary(started)

    def _request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM: finish the current step, save, and end cleanly (resumable)."""
        self.stop_requested = True

    def _should_stop(self) -> bool:
        if self.dist.world == 1:
            return self.stop_requested
        if self.step % self.cfg.run.log_every:  # ranks agree at log steps only (one all-reduce)
            return False
        flag = torch.tensor(float(self.stop_requested), device=self.dist.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _loop(self, bar: tqdm) -> None:
        cfg, spe = self.cfg, self.data.steps_per_epoch
        sums: dict[str, torch.Tensor] = {}
        n, wait, t0 = 0, 0.0, time.perf_counter()
        while self.step < self.total_steps:
            epoch = self.step // spe
            self.data.sampler.set_epoch(epoch, self.step % spe)
            it = iter(self.data.loader)
            while self.step < (epoch + 1) * spe:
                tw = time.perf_counter()
                batch = self.data.views(next(it), self.step, self.dist.device)
                wait += time.perf_counter() - tw
                self.skipped_images += batch["failed"]
                out = self.train_step(batch)
                sums = {k: sums.get(k, 0) + v for k, v in out.items()}
                n += 1
                bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == self.total_steps:
                    if self.dist.device.type == "cuda":
                        torch.cuda.synchronize()
                    wall = time.perf_counter() - t0
                    self.write_metrics(sums, n, wall, wait)
                    bar.set_postfix(loss=f"{float(sums['loss']) / n:.4f}")
                    sums, n, wait, t0 = {}, 0, 0.0, time.perf_counter()
                if cfg.run.preview_every and self.step % cfg.run.preview_every == 0:
                    self.write_preview()
                if self.step % cfg.run.save_every == 0 and self.step % spe:
                    self.save()
                if self._should_stop():
                    self.save()
                    log.info("stopped at step %d on request; resume with --resume", self.step)
                    return
            done_epoch = self.step // spe
            keep = cfg.run.keep_every_epochs and done_epoch % cfg.run.keep_every_epochs == 0
            self.save(keep_as=f"checkpoint-{done_epoch:04d}.pt" if keep else None)


def train(
    cfg: Config, out: str | Path, resume: bool = False, monitors: Sequence[Monitor] = ()
) -> dict[str, Any]:
    """Runs (or resumes) a training run in ``out``; returns the summary. ``monitors`` score the
    teacher every ``run.monitor_every`` steps (``mcssl.evaluation.online.online_monitors(cfg)``
    builds the configured ones; ``mcssl train`` passes them)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub while training
    try:
        return Trainer(cfg, out, resume, monitors).fit()
    finally:
        distributed.teardown()


def load_run_config(out: str | Path) -> Config:
    """The config saved in a run's checkpoint (for --resume without --config)."""
    return config_from_dict(load_training_state(Path(out) / "last.pt")["config"])


__all__ = ["Monitor", "Trainer", "TrainError", "build_schedules", "load_run_config", "train"]
