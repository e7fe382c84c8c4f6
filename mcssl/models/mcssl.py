"""Student / teacher meta-architecture of MC-SSL0.0 (pure modules, no I/O, no distributed)."""

from __future__ import annotations

import copy

import timm
import torch
from torch import nn

from mcssl.config import ModelConfig
from mcssl.images import grey
from mcssl.models.heads import ConceptHead, ReconstructionHead


def build_backbone(cfg: ModelConfig, init: bool = True) -> nn.Module:
    """A timm VisionTransformer without classifier; any image size that is a patch multiple.
    ``init=False`` skips the random initialisation (about a second on a CPU) for weights that
    are loaded next."""
    overrides = {k: getattr(cfg, k) for k in ("embed_dim", "depth", "num_heads") if getattr(cfg, k)}
    backbone = timm.create_model(
        cfg.arch,
        pretrained=False,
        num_classes=0,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        dynamic_img_size=True,
        drop_path_rate=cfg.drop_path,
        weight_init="" if init else "skip",
        **overrides,
    )
    if cfg.grey_input:  # a hook, not a layer: the weights stay a plain timm ViT's
        backbone.patch_embed.register_forward_pre_hook(_grey_input)
    return backbone


def _grey_input(_module: nn.Module, args: tuple) -> tuple:
    return (grey(args[0]), *args[1:])


def encode(backbone: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x: (B, 3, H, W) -> cls (B, D), data tokens (B, H/p * W/p, D) from the last block."""
    y = backbone.forward_features(x)
    return y[:, 0], y[:, backbone.num_prefix_tokens :]


def grid_of(backbone: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    p = backbone.patch_embed.patch_size
    return x.shape[-2] // p[0], x.shape[-1] // p[1]


class Student(nn.Module):
    """Backbone + patch-concept head + reconstruction head (+ learnt loss weights)."""

    def __init__(
        self, cfg: ModelConfig, cls_term: bool = False, n_loss_terms: int = 0, texture_dim: int = 0
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg)
        dim = self.backbone.num_features
        self.concept_head = ConceptHead(
            dim,
            cfg.num_concepts,
            cfg.head_hidden,
            cfg.head_bottleneck,
            cfg.norm_last_layer,
            cfg.cls_num_concepts if cls_term else 0,
        )
        self.recon_head = ReconstructionHead(
            dim, cfg.patch_size, cfg.recon_hidden, cfg.recon_bottleneck
        )
        # shortcut.texture_target's linear read-out: the tokens themselves must hold the texture
        self.texture_head = nn.Linear(dim, texture_dim) if texture_dim else None
        # log(sigma^2) per loss term for uncertainty weighting (Kendall et al.), only when used:
        # DDP requires every parameter to take part in the loss
        self.loss_log_vars = nn.Parameter(torch.zeros(n_loss_terms)) if n_loss_terms else None

    def forward(
        self, corrupted: torch.Tensor, local_views: list[torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor | None]:
        """corrupted: (B, 3, H, W) -> recon (B, 3, H, W), patch_logits (B, N, K),
        cls_logits ((B + L*B), K_cls) or None (local views (L*B) follow the global ones),
        texture (B, N, texture_dim) or None."""
        cls, tokens = encode(self.backbone, corrupted)
        out: dict[str, torch.Tensor | None] = {
            "recon": self.recon_head(tokens, grid_of(self.backbone, corrupted)),
            "patch_logits": self.concept_head(tokens),
            "cls_logits": None,
            "texture": self.texture_head(tokens) if self.texture_head is not None else None,
        }
        if self.concept_head.cls_layer is not None:
            cls_all = [cls] + [encode(self.backbone, v)[0] for v in local_views or []]
            out["cls_logits"] = self.concept_head.forward_cls(torch.cat(cls_all))
        return out


class Teacher(nn.Module):
    """Backbone + patch-concept head; an EMA of the student, never trained by gradients."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(student.backbone)
        self.concept_head = copy.deepcopy(student.concept_head)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # drop-path stays off in the teacher

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """x: (B, 3, H, W) clean -> patch_logits (B, N, K), cls_logits (B, K_cls) or None,
        tokens (B, N, D) (the backbone's, for ``shortcut.cross_image``)."""
        cls, tokens = encode(self.backbone, x)
        head = self.concept_head
        return {
            "tokens": tokens,
            "patch_logits": head(tokens),
            "cls_logits": head.forward_cls(cls) if head.cls_layer is not None else None,
        }


def ema_pairs(teacher: Teacher, student: Student) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (teacher, student) parameter lists, by name."""
    s = dict(student.named_parameters())
    t = dict(teacher.named_parameters())
    return list(t.values()), [s[name] for name in t]


@torch.no_grad()
def ema_update(teacher_params: list[torch.Tensor], student_params: list[torch.Tensor], m: float):
    """phi <- m * phi + (1 - m) * theta, with foreach ops (one kernel launch per group)."""
    torch._foreach_mul_(teacher_params, m)
    torch._foreach_add_(teacher_params, [p.detach() for p in student_params], alpha=1.0 - m)
