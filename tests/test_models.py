"""Heads, student / teacher, EMA and the timm backbone (tiny smoke-config models)."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from mcssl.losses import CenteredCrossEntropy, combine_losses, reconstruction_loss
from mcssl.models import (
    ConceptHead,
    ReconstructionHead,
    Student,
    Teacher,
    WeightNormLinear,
    build_backbone,
    ema_pairs,
    ema_update,
)


def test_concept_head_shape():
    torch.manual_seed(0)
    head = ConceptHead(dim=16, num_concepts=10, hidden=32, bottleneck=8)
    out = head(torch.randn(3, 5, 16))
    assert out.shape == (3, 5, 10)
    assert head.cls_layer is None


def test_concept_head_cls_layer_shape():
    torch.manual_seed(0)
    head = ConceptHead(dim=16, num_concepts=10, hidden=32, bottleneck=8, cls_num_concepts=7)
    assert head.forward_cls(torch.randn(4, 16)).shape == (4, 7)
    assert len(head.last_layers()) == 4  # weight_g / weight_v of the patch and CLS layers


def test_reconstruction_head_shape():
    torch.manual_seed(0)
    head = ReconstructionHead(dim=16, patch_size=4, hidden=32, bottleneck=8)
    out = head(torch.randn(2, 2 * 3, 16), (2, 3))  # non-square grid
    assert out.shape == (2, 3, 8, 12)


def test_reconstruction_head_token_to_pixel_layout():
    """Token (r, c) of the grid only drives the pixels of patch (r, c)."""
    torch.manual_seed(0)
    head = ReconstructionHead(dim=8, patch_size=2, hidden=16, bottleneck=4)
    tokens = torch.randn(1, 6, 8)
    base = head(tokens, (2, 3))
    tokens2 = tokens.clone()
    tokens2[0, 4] += 1.0  # row 1, column 1 of a 2x3 grid
    diff = (head(tokens2, (2, 3)) - base).abs().sum(1)[0]  # (4, 6)
    changed = diff > 1e-7
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[2:4, 2:4] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("h,w", [(32, 48), (48, 32), (32, 32)])
def test_student_forward_shapes_non_square(tiny_model_cfg, h, w):
    torch.manual_seed(0)
    cfg, b = tiny_model_cfg, 2
    student = Student(cfg)
    out = student(torch.randn(b, 3, h, w))
    p = cfg.patch_size
    assert out["recon"].shape == (b, 3, h, w)
    assert out["patch_logits"].shape == (b, (h // p) * (w // p), cfg.num_concepts)
    assert out["cls_logits"] is None


def test_student_cls_term_with_local_views(tiny_model_cfg):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_model_cfg, cls_num_concepts=12)
    student = Student(cfg, cls_term=True, n_loss_terms=3)
    b = 2
    local = [torch.randn(b, 3, 16, 16) for _ in range(3)]
    out = student(torch.randn(b, 3, 32, 48), local)
    assert out["cls_logits"].shape == (b + 3 * b, 12)
    assert student.loss_log_vars.shape == (3,)


def _effective_weight(layer: WeightNormLinear) -> torch.Tensor:
    """Rows of W recovered from the forward pass: layer(I) = I @ W^T = W^T."""
    eye = torch.eye(layer.weight_v.shape[1])
    return layer(eye).T


def test_weight_norm_linear_frozen_gain_unit_rows():
    torch.manual_seed(0)
    layer = WeightNormLinear(8, 5, learn_gain=False)
    with torch.no_grad():
        layer.weight_v.mul_(torch.arange(1, 6).float()[:, None])  # rows of different norms
    assert not layer.weight_g.requires_grad
    assert layer.weight_v.requires_grad
    torch.testing.assert_close(layer.weight_g, torch.ones(5, 1))
    w = _effective_weight(layer)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(5))
    # the direction is v's direction
    v = layer.weight_v.detach()
    torch.testing.assert_close(w, v / v.norm(dim=1, keepdim=True))


def test_weight_norm_linear_learnt_gain():
    torch.manual_seed(0)
    layer = WeightNormLinear(8, 5, learn_gain=True)
    assert layer.weight_g.requires_grad
    g = torch.tensor([[0.5], [1.0], [2.0], [3.0], [0.25]])
    with torch.no_grad():
        layer.weight_g.copy_(g)
    torch.testing.assert_close(_effective_weight(layer).norm(dim=1), g.squeeze(1))
    assert set(layer.state_dict()) == {"weight_g", "weight_v"}


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_concept_head_norm_last_layer_freezes_gain(norm_last_layer):
    head = ConceptHead(16, 10, 32, 8, norm_last_layer=norm_last_layer, cls_num_concepts=4)
    assert head.patch_layer.weight_g.requires_grad is (not norm_last_layer)
    assert head.cls_layer.weight_g.requires_grad is (not norm_last_layer)


def _combined_loss(student, teacher, x, corrupted, mask, crit, how):
    s, t = student(corrupted), teacher(x)
    terms = {
        "recon": reconstruction_loss(s["recon"], x, mask),
        "concept": crit(s["patch_logits"], t["patch_logits"], 0.04),
    }
    return combine_losses(terms, how, log_vars=student.loss_log_vars)


@pytest.mark.parametrize("how,n_terms", [("average", 0), ("uncertainty", 2)])
def test_every_trainable_student_param_gets_finite_grad_teacher_none(tiny_model_cfg, how, n_terms):
    """Also what DDP needs: every trainable parameter takes part in the loss."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg
    student = Student(cfg, n_loss_terms=n_terms)
    assert (student.loss_log_vars is not None) == (how == "uncertainty")
    teacher = Teacher(student)
    crit = CenteredCrossEntropy(cfg.num_concepts)
    x = torch.randn(2, 3, 32, 48)
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[:, 1:3, 2:5] = True
    corrupted = torch.where(mask.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None], 0, x)
    loss = _combined_loss(student, teacher, x, corrupted, mask, crit, how)
    loss.backward()

    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    assert len(trainable) > 10
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, p in trainable if not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradient for {bad}"
    nonzero = [n for n, p in trainable if p.grad.abs().sum() > 0]
    assert len(nonzero) >= 0.9 * len(trainable)
    # frozen weight-norm gain: no gradient
    assert student.concept_head.patch_layer.weight_g.grad is None

    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_structure_and_keys(tiny_model_cfg):
    torch.manual_seed(0)
    student = Student(tiny_model_cfg)
    teacher = Teacher(student)
    assert not hasattr(teacher, "recon_head")
    assert not any(k.startswith("recon_head") for k in teacher.state_dict())
    expected = {k for k in student.state_dict() if k.startswith(("backbone.", "concept_head."))}
    assert set(teacher.state_dict()) == expected
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, student.state_dict()[k])  # starts as a copy
    # a copy, not shared storage
    assert all(
        t.data_ptr() != s.data_ptr() for t, s in zip(*ema_pairs(teacher, student), strict=True)
    )
    teacher.train()
    assert not teacher.training and not teacher.backbone.training
    out = teacher(torch.randn(2, 3, 32, 48))
    assert out["patch_logits"].shape == (2, 24, tiny_model_cfg.num_concepts)
    assert not out["patch_logits"].requires_grad


def test_ema_update_matches_formula_on_plain_tensors():
    torch.manual_seed(0)
    phi = [torch.randn(3, 4), torch.randn(5)]
    theta = [torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)]
    m = 0.9
    expected = [
        m * a.clone() + (1 - m) * b.detach().clone() for a, b in zip(phi, theta, strict=True)
    ]
    theta_before = [b.detach().clone() for b in theta]
    ema_update(phi, theta, m)
    for got, want in zip(phi, expected, strict=True):
        torch.testing.assert_close(got, want)
    for b, before in zip(theta, theta_before, strict=True):
        assert torch.equal(b.detach(), before)  # the student is left alone


@pytest.mark.parametrize("m", [0.0, 0.7, 0.996, 1.0])
def test_ema_update_teacher_from_student(tiny_model_cfg, m):
    torch.manual_seed(0)
    student = Student(tiny_model_cfg)
    teacher = Teacher(student)
    with torch.no_grad():  # make student and teacher differ
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    t_params, s_params = ema_pairs(teacher, student)
    names = [n for n, _ in teacher.named_parameters()]
    assert len(t_params) == len(names) == len(s_params)
    s_named = dict(student.named_parameters())
    for n, s in zip(names, s_params, strict=True):
        assert s is s_named[n]
    expected = {
        n: m * t.detach().clone() + (1 - m) * s.detach().clone()
        for n, t, s in zip(names, t_params, s_params, strict=True)
    }
    ema_update(t_params, s_params, m)
    for n, p in teacher.named_parameters():
        torch.testing.assert_close(p, expected[n])


def test_build_backbone_loads_strictly_into_plain_timm(tiny_model_cfg):
    torch.manual_seed(0)
    cfg = tiny_model_cfg
    ours = build_backbone(cfg)
    plain = timm.create_model(
        cfg.arch,
        pretrained=False,
        num_classes=0,
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
    )
    sd = ours.state_dict()
    assert list(sd) == list(plain.state_dict())
    for k, v in plain.state_dict().items():
        assert sd[k].shape == v.shape, k
    result = plain.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert ours.num_features == cfg.embed_dim
    assert len(ours.blocks) == cfg.depth
    # same weights -> same features at the native size
    ours.eval()
    plain.eval()
    x = torch.randn(1, 3, cfg.img_size, cfg.img_size)
    torch.testing.assert_close(ours.forward_features(x), plain.forward_features(x))
