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


class CenteredCrossEntropy(nn.Module):
    """``-sum_j p_t log p_s``, ``p_t = softmax((z_t - c) / tau_t)``, ``p_s = softmax(z_s / tau_s)``.

    The centre ``c`` is an EMA of the teacher's mean logits over every token of the global
    batch (all-reduced under DDP), updated after the loss is computed.
    """

    def __init__(self, num_concepts: int, student_temp: float = 0.1, momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(num_concepts))

    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """fp32 also under autocast (as the student's log-softmax): see WeightNormLinear."""
        with _fp32(teacher_logits):
            z = teacher_logits.detach().float() - self.center
            return F.softmax(z / teacher_temp, dim=-1)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float
    ) -> torch.Tensor:
        """Patch form: student/teacher logits (B, N, K), token-aligned -> mean over B*N tokens."""
        p_t = self.teacher_probs(teacher_logits, teacher_temp)
        with _fp32(student_logits):
            log_p_s = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
            return -(p_t * log_p_s).sum(-1).mean()

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
