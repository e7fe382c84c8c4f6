"""Concept-discovery metrics at patch level: ground truth per patch, ARI, matched mIoU, NMI."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def patch_labels(mask: np.ndarray, patch: int) -> np.ndarray:
    """Pixel mask (H, W) -> majority class per patch (H/p, W/p); ties go to the lower id."""
    h, w = mask.shape[0] // patch, mask.shape[1] // patch
    blocks = mask[: h * patch, : w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3)
    flat = blocks.reshape(h * w, patch * patch)
    counts = np.apply_along_axis(np.bincount, 1, flat, minlength=int(mask.max()) + 1)
    return counts.argmax(1).reshape(h, w)


def ari(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(adjusted_rand_score(truth.ravel(), pred.ravel()))


def nmi(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(normalized_mutual_info_score(truth.ravel(), pred.ravel()))


def matched_miou(truth: np.ndarray, pred: np.ndarray) -> float:
    """Mean IoU over ground-truth classes after a one-to-one (Hungarian) matching of predicted
    clusters to classes; a class left without a cluster counts as IoU 0."""
    t, p = truth.ravel(), pred.ravel()
    classes, clusters = np.unique(t), np.unique(p)
    iou = np.zeros((len(classes), len(clusters)))
    for i, c in enumerate(classes):
        for j, k in enumerate(clusters):
            inter = np.sum((t == c) & (p == k))
            iou[i, j] = inter / np.sum((t == c) | (p == k))
    rows, cols = linear_sum_assignment(-iou)
    return float(iou[rows, cols].sum() / len(classes))
