"""Online monitors: label-free quality of the teacher while it trains.

Each monitor is a ``(teacher backbone, step) -> {name: score}`` callable that the training
loop runs every ``run.monitor_every`` steps on rank 0 (``mcssl.train.Monitor``).
"""

from __future__ import annotations

import numpy as np
import torch

from mcssl.config import Config
from mcssl.evaluation.concepts import encoder_features, score, synthetic
from mcssl.evaluation.knn import ImageFolder, knn_eval
from mcssl.explore.concepts import kmeans_labels, to_grid, upsample_labels
from mcssl.explore.encoder import Encoder
from mcssl.explore.render import overlay
from mcssl.images import sample_photos
from mcssl.train import Monitor

PROBES = 4  # sample photos whose concept overlays TensorBoard shows
PROBE_SIDE = 224  # their longer side in the overlay, pixels


def _encoder(backbone: torch.nn.Module, step: int) -> Encoder:
    return Encoder(backbone, None, None, 0.0, {}, f"step{step}")


def concept_monitor(n_scenes: int, patch_size: int) -> Monitor:
    """Concept-discovery ARI / mIoU / NMI and the image-identity share of the token variance
    (the per-image shortcut) on a fixed set of generated scenes (mcssl eval concepts, without
    baselines). The argmax measures need the concept head, which the monitor does not get."""
    scenes = []  # made at the first call: only the rank that writes metrics needs them

    @torch.no_grad()
    def run(backbone: torch.nn.Module, step: int) -> dict[str, float]:
        scenes[:] = scenes or synthetic(n_scenes, seed=12345)
        feats = encoder_features(_encoder(backbone, step), min(scenes[0].image.size))(
            [d.image for d in scenes]
        )
        got = score(feats, scenes, patch_size)
        return {
            "concept_ari": got["ari"],
            "concept_miou": got["miou"],
            "concept_nmi": got["nmi"],
            "concept_image_share": got["image_share"],
        }

    return run


def knn_monitor(train_dir: str, val_dir: str, resolution: int) -> Monitor:
    """kNN top-1 / top-5 on the user's labelled folders."""
    sets = (ImageFolder.read(train_dir), ImageFolder.read(val_dir))

    @torch.no_grad()
    def run(backbone: torch.nn.Module, step: int) -> dict[str, float]:
        got = knn_eval(_encoder(backbone, step), *sets, resolution=resolution)
        return {"knn_top1": got["knn_top1"], "knn_top5": got["knn_top5"]}

    return run


def overlay_monitor(resolution: int, k: int = 4) -> Monitor:
    """Concept overlays (k-means on the teacher's tokens, as the explorer's) of the first
    ``PROBES`` bundled sample photos -> ``{"concepts/<name>": (H, W, 3) uint8}`` images."""
    probes = []  # made at the first call (rank 0 only)

    @torch.no_grad()
    def run(backbone: torch.nn.Module, step: int) -> dict[str, np.ndarray]:
        if not probes:
            for name, img in list(sample_photos().items())[:PROBES]:
                img = img.copy()
                img.thumbnail((PROBE_SIDE, PROBE_SIDE))
                probes.append((name, img))
        feats = encoder_features(_encoder(backbone, step), resolution)([p[1] for p in probes])
        out = {}
        for (name, img), (tokens, grid, _) in zip(probes, feats, strict=True):
            labels = upsample_labels(to_grid(kmeans_labels(tokens, k), grid), img.size[::-1])
            out[f"concepts/{name}"] = np.asarray(overlay(img, labels))
        return out

    return run


def online_monitors(cfg: Config) -> list[Monitor]:
    """The monitors ``cfg.run`` asks for (none when ``run.monitor_every`` is 0); with
    ``run.tensorboard`` also the concept overlays of a few sample photos."""
    rc = cfg.run
    if not rc.monitor_every:
        return []
    monitors = [concept_monitor(rc.monitor_scenes, cfg.model.patch_size)]
    if rc.knn_train:
        monitors.append(knn_monitor(rc.knn_train, rc.knn_val, cfg.model.img_size))
    if rc.tensorboard:
        monitors.append(overlay_monitor(cfg.model.img_size))
    return monitors
