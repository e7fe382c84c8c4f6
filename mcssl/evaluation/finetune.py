"""Downstream fine-tuning (and linear probing) of an exported teacher backbone.

Multi-label (the paper's Table 1): the mean of the data tokens -> FC 2048 -> GELU -> FC C ->
sigmoid, trained with the asymmetric loss (gamma+ = 0, gamma- = 4); mAP, CP, CR, CF1, OP, OR,
OF1 at 0.5. Multi-class (Table 2): a linear head on the mean of the data tokens, cross-entropy;
the DeiT-style recipe's parts as options (label smoothing, mixup / cutmix, auto-augment);
top-1 / top-5. ``frozen`` trains the head only (linear probe). DDP through torchrun as in
training; ``last.pt`` after every epoch; every epoch is seeded by (seed, epoch), so a resumed
run ends bit-identical to an uninterrupted one; metrics as JSON.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.transforms import v2

from mcssl.evaluation.datasets import Labelled
from mcssl.evaluation.knn import LabelledDataError, topk_accuracy
from mcssl.evaluation.multilabel import multilabel_metrics
from mcssl.explore.encoder import Encoder
from mcssl.images import MEAN, STD, ImageError, load_rgb
from mcssl.losses.asl import AsymmetricLoss
from mcssl.train import distributed


@dataclass
class FinetuneConfig:
    epochs: int = 10
    batch_size: int = 64  # per process
    lr: float = 1e-4  # AdamW, for a total batch of 256 (scaled linearly), cosine to 0
    weight_decay: float = 0.05
    img_size: int = 224  # the paper uses 448 for multi-label
    frozen: bool = False  # linear probe: the backbone stays fixed
    randaugment: bool = False
    autoaugment: bool = False  # the ImageNet policy (DeiT's recipe uses it for multi-class)
    label_smoothing: float = 0.0  # multi-class only
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0 = off; multi-class only
    cutmix: float = 0.0  # the same for cutmix; with both, one of the two per batch
    gamma_pos: float = 0.0  # asymmetric loss, multi-label only
    gamma_neg: float = 4.0
    workers: int = 4
    seed: int = 0


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int, multilabel: bool) -> None:
        super().__init__()
        self.backbone = backbone
        d = backbone.num_features
        self.head = (
            nn.Sequential(nn.Linear(d, 2048), nn.GELU(), nn.Linear(2048, n_classes))
            if multilabel
            else nn.Linear(d, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, C) from the mean of the data tokens."""
        tokens = self.backbone.forward_features(x)[:, self.backbone.num_prefix_tokens :]
        return self.head(tokens.mean(1))


class ImageSet(Dataset):
    def __init__(self, data: Labelled, transform: v2.Compose) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            img = load_rgb(self.data.paths[i])
        except ImageError as e:
            raise LabelledDataError(str(e)) from None
        return self.transform(img), torch.as_tensor(self.data.targets[i])


def transforms(cfg: FinetuneConfig, train: bool) -> v2.Compose:
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    if not train:
        return v2.Compose([v2.Resize((cfg.img_size, cfg.img_size)), *tail])
    aug = [v2.RandomResizedCrop(cfg.img_size, scale=(0.5, 1.0)), v2.RandomHorizontalFlip()]
    if cfg.randaugment:
        aug.append(v2.RandAugment())
    if cfg.autoaugment:
        aug.append(v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET))
    return v2.Compose([*aug, *tail])


def batch_mixer(cfg: FinetuneConfig, n_classes: int) -> v2.Transform | None:
    """Mixup and/or cutmix on (images, class ids) -> (images, soft targets (B, C))."""
    mixers = [m(alpha=a, num_classes=n_classes)
              for m, a in ((v2.MixUp, cfg.mixup), (v2.CutMix, cfg.cutmix)) if a > 0]  # fmt: skip
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, multilabel: bool, dev) -> dict[str, float]:
    model.eval()
    scores, targets = [], []
    for x, y in loader:
        logits = model(x.to(dev)).float()
        scores.append((logits.sigmoid() if multilabel else logits.softmax(-1)).cpu().numpy())
        targets.append(y.numpy())
    s, t = np.concatenate(scores), np.concatenate(targets)
    if multilabel:
        return multilabel_metrics(s, t)
    return {"top1": topk_accuracy(s, t, 1), "top5": topk_accuracy(s, t, 5)}


def _loss(cfg: FinetuneConfig, multilabel: bool) -> nn.Module:
    if multilabel:
        return AsymmetricLoss(cfg.gamma_pos, cfg.gamma_neg)
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


def finetune(
    enc: Encoder, train: Labelled, val: Labelled, cfg: FinetuneConfig, out: str | Path,
    resume: bool = False,
) -> dict:  # fmt: skip
    """Trains, evaluates on ``val`` after every epoch, writes OUT/metrics.jsonl, OUT/last.pt
    and OUT/results.json (rank 0); returns the final results."""
    out = Path(out)
    multilabel = train.multilabel
    if multilabel and (cfg.mixup or cfg.cutmix):
        raise LabelledDataError("mixup / cutmix are for multi-class data (the paper's Table 2)")
    d = distributed.setup("auto")
    torch.manual_seed(cfg.seed)
    model = Classifier(copy.deepcopy(enc.backbone), len(train.classes), multilabel).to(d.device)
    model.backbone.requires_grad_(not cfg.frozen)
    wrapped = DistributedDataParallel(model) if d.world > 1 else model
    sampler = DistributedSampler(ImageSet(train, transforms(cfg, True)), d.world, d.rank,
                                 seed=cfg.seed) if d.world > 1 else None  # fmt: skip
    train_loader = DataLoader(
        ImageSet(train, transforms(cfg, True)), cfg.batch_size, shuffle=sampler is None,
        sampler=sampler, num_workers=cfg.workers, drop_last=len(train.paths) > cfg.batch_size,
    )  # fmt: skip
    val_loader = DataLoader(ImageSet(val, transforms(cfg, False)), cfg.batch_size,
                            num_workers=cfg.workers)  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    lr = cfg.lr * cfg.batch_size * d.world / 256
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    total = cfg.epochs * max(1, len(train_loader))
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    loss_fn, start = _loss(cfg, multilabel), 0
    mix = batch_mixer(cfg, len(train.classes))
    if resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location=d.device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["epoch"]
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(hash((cfg.seed, epoch)) & 0x7FFF_FFFF)  # shuffling, workers, mixing
        if sampler is not None:
            sampler.set_epoch(epoch)
        wrapped.train()
        if cfg.frozen:
            model.backbone.eval()  # no dropout / drop-path in a linear probe
        t0, losses = time.time(), []
        for x, y in train_loader:
            if mix is not None:
                x, y = mix(x, y)
            loss = loss_fn(wrapped(x.to(d.device)), y.to(d.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        metrics = evaluate(model, val_loader, multilabel, d.device)
        if d.is_main:
            row = {"epoch": epoch + 1, "steps": len(losses), "loss": float(np.mean(losses)),
                   **metrics, "epoch_s": time.time() - t0}  # fmt: skip
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "epoch": epoch + 1}  # fmt: skip
            torch.save(state, out / "last.pt.tmp")
            (out / "last.pt.tmp").replace(out / "last.pt")  # a kill never leaves half a file
    if not metrics:  # resumed a finished run: just evaluate it
        metrics = evaluate(model, val_loader, multilabel, d.device)
    digests = distributed.all_gather_object(distributed.params_digest(model))
    results = {
        "task": "multilabel" if multilabel else "multiclass",
        "classes": train.classes,
        "train_images": len(train.paths),
        "val_images": len(val.paths),
        "config": asdict(cfg),
        "world_size": d.world,
        "ranks_in_sync": len(set(digests)) == 1,
        **metrics,
    }
    if d.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    del wrapped  # the DDP wrapper goes before its process group (distributed.teardown)
    distributed.teardown()
    return results
