"""Health of a running MC-SSL training: collapse signals and a label-free concept score.

Everything here is computed under ``no_grad`` on tensors the step already has (teacher and
student logits, the reconstruction, the GMML mask), at logging steps only, so it costs a
few softmaxes. The collapse rules name the two ways a DINO-style teacher fails:

* **uniform**: the teacher's per-token distribution is nearly flat (entropy close to log K),
  so it teaches nothing; usually the centre dominates or the teacher temperature is too high.
* **dominant**: the batch uses only a handful of pseudo-concepts (perplexity of the
  batch-mean teacher distribution tiny compared with K); usually too little centring, a too
  sharp teacher or a too high learning rate.
"""

from __future__ import annotations

import math

import torch

from mcssl.losses.recon import pixel_mask

REMEDIES = {
    "uniform": "lower loss.teacher_temp, raise loss.center_momentum, or lower optim.base_lr",
    "dominant": "raise loss.center_momentum (more centring) or loss.teacher_temp, lower "
    "optim.base_lr, or use a smaller model.num_concepts",
}
UNIFORM_FRAC = 0.98  # teacher entropy / log K above this = uniform collapse
DOMINANT_MIN = 4.0  # fewer effective pseudo-concepts in a batch than this = dominant collapse


@torch.no_grad()
def concept_health(teacher_probs: torch.Tensor, student_logits: torch.Tensor) -> dict[str, float]:
    """teacher_probs (..., K) (centred, sharpened), student_logits (..., K) ->
    teacher_entropy (mean per-token, nats), teacher_entropy_frac (/ log K), concepts_in_use
    (perplexity of the batch-mean teacher distribution), agreement (student argmax ==
    teacher argmax, fraction of tokens)."""
    p = teacher_probs.float().reshape(-1, teacher_probs.shape[-1])
    k = p.shape[-1]
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1).mean()
    mean = p.mean(0)
    perplexity = torch.exp(-(mean * mean.clamp_min(1e-12).log()).sum())
    s = student_logits.reshape(-1, k)
    agree = (s.argmax(-1) == p.argmax(-1)).float().mean()
    return {
        "teacher_entropy": float(ent),
        "teacher_entropy_frac": float(ent) / math.log(k),
        "concepts_in_use": float(perplexity),
        "agreement": float(agree),
    }


@torch.no_grad()
def recon_split(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean L1 on corrupted and on clean patches: recon/target (B, 3, H, W), mask (B, h, w)."""
    px = pixel_mask(mask, target)
    err = (recon.float() - target.float()).abs()
    n_c, n_all = px.sum(), px.numel()
    corrupted = (err * px).sum() / n_c.clamp_min(1)
    clean = (err * ~px).sum() / max(1, n_all - int(n_c))
    return {"recon_corrupted": float(corrupted), "recon_clean": float(clean)}


def collapse(row: dict[str, float]) -> str | None:
    """'uniform', 'dominant' or None from a metrics row with :func:`concept_health` keys."""
    if row.get("teacher_entropy_frac", 0.0) > UNIFORM_FRAC:
        return "uniform"
    if row.get("concepts_in_use", math.inf) < DOMINANT_MIN:
        return "dominant"
    return None


def warning(kind: str) -> str:
    return f"training looks collapsed ({kind}): {REMEDIES[kind]}"
