"""Multi-label metrics of the paper's Table 1: mAP and the per-class (CP, CR, CF1) and overall
(OP, OR, OF1) precision / recall / F1 at a threshold."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class: mean of the precision at each positive, ranked by score."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def multilabel_metrics(
    scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    """scores (N, C) probabilities, targets (N, C) in {0, 1} -> mAP (over classes with a
    positive), CP, CR, CF1 (per class, averaged), OP, OR, OF1 (over all decisions)."""
    scores, targets = np.asarray(scores, float), np.asarray(targets) > 0
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    pred = scores >= threshold
    tp = (pred & targets).sum(0).astype(float)
    n_pred, n_true = pred.sum(0).astype(float), targets.sum(0).astype(float)
    cp = float(np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)))
    cr = float(np.mean(np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0)))
    op = float(tp.sum() / max(n_pred.sum(), 1))
    o_r = float(tp.sum() / max(n_true.sum(), 1))
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    return {
        "mAP": float(np.nanmean(aps)),
        "CP": cp,
        "CR": cr,
        "CF1": f1(cp, cr),
        "OP": op,
        "OR": o_r,
        "OF1": f1(op, o_r),
    }
