"""Teacher-student cross-entropy with centring and sharpening (patch tokens or CLS)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average over processes when a process group exists; identity otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def _fp32(t: torch.Tensor) -> torch.autocast:
    """Autocast off on ``t``'s device: the softmaxes at temperature ~0.04 stay fp32."""
    return torch.autocast(t.device.type, enabled=False)


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iters: int) -> torch.Tensor:
    """Targets balanced over every row of the global batch (SwAV; DINOv2 for patch tokens):
    rows of ``exp(logits / temp)`` rescaled so that each row sums to 1 and each of the K
    columns to rows / K, summed over all processes under DDP. logits: (..., K) -> same shape."""
    shape, k = logits.shape, logits.shape[-1]
    z = logits.detach().float().reshape(-1, k) / temp
    # a shift per row is a scale per row, which the row normalisation undoes: no overflow
    q = torch.exp(z - z.max(1, keepdim=True).values)  # (R, K)
    rows = torch.tensor(float(q.shape[0]), device=q.device)
    q /= _all_reduce_sum(q.sum())
    rows = _all_reduce_sum(rows)
    for _ in range(iters):
        q /= _all_reduce_sum(q.sum(0, keepdim=True)).clamp_min(1e-30) * k  # columns: 1 / K
        q /= q.sum(1, keepdim=True).clamp_min(1e-30) * rows  # rows: 1 / R
    return (q * rows).reshape(shape)


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def soft_cross_entropy(
    student_logits: torch.Tensor, targets: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """``-sum_j t log softmax(s / tau_s)``, averaged over tokens, in fp32 also under autocast.
    student_logits, targets: (..., K) -> scalar."""
    with _fp32(student_logits):
        log_p_s = F.log_softmax(student_logits.float() / student_temp, dim=-1)
        return -(targets * log_p_s).sum(-1).mean()


class CenteredCrossEntropy(nn.Module):
    """``-sum_j p_t log p_s``, ``p_t = softmax((z_t - c) / tau_t)``, ``p_s = softmax(z_s / tau_s)``.

    The centre ``c`` is an EMA of the teacher's mean logits over every token of the global
    batch (all-reduced under DDP), updated after the loss is computed. Levers against the
    per-image shortcut (``shortcut.*``, off by default): ``image_centring`` first subtracts
    that fraction of each image's mean logit over its tokens (patch form only);
    ``sinkhorn_iters`` > 0 replaces centring + softmax by ``sinkhorn_knopp``.
    """

    def __init__(
        self,
        num_concepts: int,
        student_temp: float = 0.1,
        momentum: float = 0.9,
        sinkhorn_iters: int = 0,
        image_centring: float = 0.0,
    ):
        super().__init__()
        self.student_temp = student_temp
        self.momentum = momentum
        self.sinkhorn_iters = sinkhorn_iters
        self.image_centring = image_centring
        self.register_buffer("center", torch.zeros(num_concepts))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """fp32 also under autocast (as the student's log-softmax): see WeightNormLinear."""
        with _fp32(teacher_logits):
            z = teacher_logits.detach().float()
            if self.image_centring and z.ndim == 3:  # (B, N, K): tokens of one image share a mean
                z = z - self.image_centring * z.mean(1, keepdim=True)
            if self.sinkhorn_iters:
                return sinkhorn_knopp(z, teacher_temp, self.sinkhorn_iters)
            return F.softmax((z - self.center) / teacher_temp, dim=-1)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Patch form: student/teacher logits (B, N, K), token-aligned -> mean over B*N tokens."""
        p_t = self.teacher_probs(teacher_logits, teacher_temp)
        return soft_cross_entropy(student_logits, p_t, self.student_temp)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """teacher_logits: (..., K) of this step."""
        mean = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1]).mean(0)
        mean = _all_reduce_mean(mean)
        self.center.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)


class MultiViewCrossEntropy(CenteredCrossEntropy):
    """DINO image-level term: every teacher global view against every other student view."""

    def forward(  # type: ignore[override]
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_temp: float,
        n_global: int = 2,
    ) -> torch.Tensor:
        """student_logits: (V*B, K), views first; teacher_logits: (G*B, K) -> scalar."""
        b = teacher_logits.shape[0] // n_global
        p_t = self.teacher_probs(teacher_logits, teacher_temp).chunk(n_global)
        with _fp32(student_logits):
            log_p_s = F.log_softmax(student_logits.float() / self.student_temp, -1).split(b)
        terms = [
            -(t * s).sum(-1).mean()
            for i, t in enumerate(p_t)
            for j, s in enumerate(log_p_s)
            if i != j
        ]
        return torch.stack(terms).mean()
