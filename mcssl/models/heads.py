"""The two student heads on the data tokens (pure modules, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Three FC layers with GELU between them (indices 0/2/4 are the Linear layers)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, out_dim),
    )


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, ``W = g * v / ||v||`` per output.

    Written out instead of torch's parametrisation so the state dict keys stay
    ``weight_g`` / ``weight_v`` (the layout the reference checkpoints use). With
    ``learn_gain=False`` the gain is fixed at 1 (the reference's ``norm_last_layer``).
    """

    def __init__(self, in_dim: int, out_dim: int, learn_gain: bool = False) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        # nn.Linear's default init, as the reference (DINO's last layer is a plain nn.Linear
        # under weight_norm): trunc-normal(0.02) would make v 1.8x smaller, and under Adam
        # (steps of a fixed size) the direction v / ||v|| would turn that much faster
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Always in fp32, also under autocast: the outputs are cosines in [-1, 1] that the
        loss divides by a temperature of ~0.04, so bf16 rounding (~0.004) would become ~0.1
        nat."""
        with torch.autocast(x.device.type, enabled=False):
            w = self.weight_g.float() * F.normalize(self.weight_v.float(), dim=1)
            return F.linear(x.float(), w)


class ConceptHead(nn.Module):
    """Patch-concept head ``s_pc``: MLP -> L2 norm -> weight-normed linear to K concepts.

    An optional second last layer (``cls_layer``) serves the image-level DINO term on the
    CLS token; the MLP is shared, as in the reference code.
    """

    def __init__(
        self,
        dim: int,
        num_concepts: int,
        hidden: int = 2048,
        bottleneck: int = 256,
        norm_last_layer: bool = True,
        cls_num_concepts: int = 0,
    ) -> None:
        super().__init__()
        self.mlp = mlp(dim, hidden, bottleneck)
        self.mlp.apply(_init_linear)
        self.patch_layer = WeightNormLinear(bottleneck, num_concepts, not norm_last_layer)
        self.cls_layer = (
            WeightNormLinear(bottleneck, cls_num_concepts, not norm_last_layer)
            if cls_num_concepts
            else None
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (..., D) -> logits (..., K), fp32 (the L2 norm and last layer run in fp32)."""
        return self.patch_layer(F.normalize(self.mlp(tokens).float(), dim=-1))

    def forward_cls(self, cls: torch.Tensor) -> torch.Tensor:
        """cls: (B, D) -> logits (B, K_cls), fp32."""
        assert self.cls_layer is not None, "built without a CLS layer"
        return self.cls_layer(F.normalize(self.mlp(cls).float(), dim=-1))

    def last_layers(self, heads: Sequence[str] = ("patch", "cls")) -> list[nn.Parameter]:
        """Parameters of the last layers named in ``heads`` ("patch", "cls")."""
        layers = {"patch": self.patch_layer, "cls": self.cls_layer}
        return [p for h in heads if layers[h] is not None for p in layers[h].parameters()]


class ReconstructionHead(nn.Module):
    """Patch reconstruction head ``s_pr``: MLP per token, then a transposed conv to pixels."""

    def __init__(
        self, dim: int, patch_size: int, hidden: int = 2048, bottleneck: int = 256
    ) -> None:
        super().__init__()
        self.mlp = mlp(dim, hidden, bottleneck)
        self.mlp.apply(_init_linear)
        self.to_pixels = nn.ConvTranspose2d(bottleneck, 3, patch_size, stride=patch_size)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """tokens: (B, N, D), grid (h, w) with h*w = N -> image (B, 3, h*p, w*p)."""
        b, n, _ = tokens.shape
        y = self.mlp(tokens).transpose(1, 2).reshape(b, -1, *grid)
        return self.to_pixels(y)
