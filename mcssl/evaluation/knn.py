"""Weighted k-nearest-neighbour classification on frozen features (DINO's protocol), used by
``mcssl eval knn`` and by the online kNN monitor during training.

Features are the mean of the teacher's data tokens (the paper classifies from data tokens);
similarity is cosine; each of the k neighbours votes for its class with exp(sim / T).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcssl.explore.encoder import Encoder
from mcssl.explore.features import FeatureExtractor, Settings
from mcssl.images import IMAGE_EXTENSIONS, ImageError, load_rgb


class LabelledDataError(ValueError):
    """A labelled dataset that cannot be read; one-line message."""


@dataclass
class ImageFolder:
    """``root/<class>/**/<image>``: classes are the sorted sub-folder names."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    classes: list[str]

    @classmethod
    def read(cls, root: str | Path) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise LabelledDataError(f"{root}: no such folder")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        paths, labels = [], []
        for i, c in enumerate(classes):
            found = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            paths += found
            labels += [i] * len(found)
        if len(classes) < 2 or not paths:
            raise LabelledDataError(
                f"{root}: expected an ImageFolder layout (one sub-folder of images per class, "
                f"at least two classes); found {len(classes)} classes, {len(paths)} images"
            )
        return cls(paths, np.asarray(labels, np.int64), classes)


def mean_token_features(enc: Encoder, paths: list[Path], resolution: int) -> np.ndarray:
    """(N, D) L2-normalised means of the teacher's last-block data tokens."""
    ex = FeatureExtractor(enc, Settings(resolution=resolution, max_side=resolution), cache=0)
    out = []
    for i in range(0, len(paths), 64):
        images = []
        for p in paths[i : i + 64]:
            try:
                images.append(load_rgb(p).resize((resolution, resolution)))
            except ImageError as e:
                raise LabelledDataError(str(e)) from None
        out += [f.tokens.mean(0) for f in ex(images)]
    x = np.stack(out).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    n_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """-> (M, n_classes) vote scores for each test row (rows of x are unit vectors)."""
    sim = torch.from_numpy(test_x) @ torch.from_numpy(train_x).T  # (M, N)
    k = min(k, sim.shape[1])
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(test_x), n_classes)
    votes.scatter_add_(1, torch.from_numpy(train_y)[idx], (top / temperature).exp())
    return votes.numpy()


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def knn_eval(
    enc: Encoder, train: ImageFolder, test: ImageFolder, resolution: int, k: int = 20
) -> dict[str, float]:
    if train.classes != test.classes:
        raise LabelledDataError("train and test folders have different classes")
    xtr = mean_token_features(enc, train.paths, resolution)
    xte = mean_token_features(enc, test.paths, resolution)
    scores = knn_classify(xtr, train.labels, xte, len(train.classes), k)
    return {
        "knn_top1": topk_accuracy(scores, test.labels, 1),
        "knn_top5": topk_accuracy(scores, test.labels, 5),
        "train_images": len(train.paths),
        "test_images": len(test.paths),
    }
