"""Per-step schedules, the training schedules built from a config, and weight-decay groups."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mcssl.models import Student
from mcssl.train.loop import build_schedules, param_groups
from mcssl.train.schedules import cosine_schedule, warmup_constant


# ---- cosine_schedule --------------------------------------------------------------------
@pytest.mark.parametrize("total,warmup", [(100, 10), (37, 5), (50, 0), (12, 10), (2, 0)])
def test_cosine_length_and_endpoints(total, warmup):
    start, end, w0 = 5e-4, 1e-6, 1e-5
    s = cosine_schedule(start, end, total, warmup, warmup_start=w0)
    assert len(s) == total
    assert abs(s[-1] - end) <= 1e-12  # the last step reaches the end value exactly
    assert s[warmup] == pytest.approx(start, rel=1e-12)  # the first step after warm-up: peak
    if warmup:
        assert s[0] == w0
        assert s[warmup - 1] < start
        # linear warm-up: equal increments reaching the peak one step after it ends
        np.testing.assert_allclose(np.diff(s[: warmup + 1]), (start - w0) / warmup, rtol=1e-9)
    assert np.all(np.diff(s[warmup:]) <= 0)  # monotone decreasing after the warm-up
    if total - warmup > 2:
        assert np.all(np.diff(s[warmup:]) < 0)


def test_cosine_midpoint_and_shape():
    s = cosine_schedule(1.0, 0.0, 101)  # t = i / 100
    assert s[50] == pytest.approx(0.5, abs=1e-12)
    assert s[25] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)), abs=1e-12)
    assert s[0] == 1.0 and s[-1] == 0.0


def test_cosine_increasing_schedule_ends_exactly():
    s = cosine_schedule(0.996, 1.0, 1000)  # the teacher momentum goes up to exactly 1
    assert s[0] == pytest.approx(0.996, abs=1e-15)
    assert abs(s[-1] - 1.0) <= 1e-12
    assert np.all(np.diff(s) >= 0) and np.all(s <= 1.0)


@pytest.mark.parametrize("total,warmup", [(3, 5), (1, 0), (1, 3), (1, 1), (5, 5), (6, 5), (0, 0)])
def test_cosine_edge_cases_do_not_crash(total, warmup):
    s = cosine_schedule(1.0, 0.1, total, warmup, warmup_start=0.01)
    assert len(s) == total
    assert np.all(np.isfinite(s))
    assert np.all((s >= 0.01 - 1e-12) & (s <= 1.0 + 1e-12))
    if total == 1 and warmup == 0:
        assert s[0] == pytest.approx(0.1, abs=1e-12)  # a single step is the last step


# ---- warmup_constant --------------------------------------------------------------------
def test_warmup_constant():
    s = warmup_constant(0.04, 0.07, 20, 5)
    assert len(s) == 20
    np.testing.assert_allclose(s[:5], [0.04, 0.046, 0.052, 0.058, 0.064], rtol=1e-12)
    assert np.all(s[5:] == 0.07)


@pytest.mark.parametrize("total,warmup", [(3, 10), (4, 0), (1, 1), (0, 0)])
def test_warmup_constant_edge_cases(total, warmup):
    s = warmup_constant(0.04, 0.07, total, warmup)
    assert len(s) == total
    assert np.all(np.isfinite(s))
    if warmup == 0:
        assert np.all(s == 0.07)
    elif total:
        assert s[0] == 0.04


# ---- build_schedules --------------------------------------------------------------------
@pytest.mark.parametrize("steps_per_epoch,world", [(5, 1), (3, 4), (1, 2)])
def test_build_schedules(smoke_cfg, steps_per_epoch, world):
    cfg = smoke_cfg
    cfg.optim = dataclasses.replace(cfg.optim, epochs=4, warmup_epochs=1, batch_size=8)
    cfg.loss = dataclasses.replace(
        cfg.loss, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2
    )
    o = cfg.optim
    sch = build_schedules(cfg, steps_per_epoch, world)
    total = 4 * steps_per_epoch
    for name in ("lr", "wd", "momentum", "teacher_temp"):
        assert len(getattr(sch, name)) == total, name  # the final epoch included
    peak = o.base_lr * 8 * world / 256
    warm = 1 * steps_per_epoch
    assert sch.lr[warm] == pytest.approx(peak, rel=1e-12)
    assert sch.lr.max() == pytest.approx(peak, rel=1e-12)
    assert sch.lr[0] < peak
    assert abs(sch.lr[-1] - o.min_lr) <= 1e-12
    assert (
        sch.wd[0] == pytest.approx(o.weight_decay) and abs(sch.wd[-1] - o.weight_decay_end) < 1e-12
    )
    assert sch.momentum[0] == pytest.approx(o.momentum_teacher)
    assert abs(sch.momentum[-1] - o.momentum_teacher_end) <= 1e-12
    assert sch.teacher_temp[0] == pytest.approx(0.04)
    assert np.all(sch.teacher_temp[2 * steps_per_epoch :] == 0.07)
    # every step of the last epoch has a value (the reference was one step short)
    last_epoch = [float(sch.lr[(4 - 1) * steps_per_epoch + k]) for k in range(steps_per_epoch)]
    assert all(np.isfinite(last_epoch))


# ---- param_groups -----------------------------------------------------------------------
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_param_groups_decay_split(tiny_model_cfg, norm_last_layer):
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_model_cfg, norm_last_layer=norm_last_layer)
    model = Student(cfg, cls_term=True, n_loss_terms=3)
    groups = param_groups(model)
    assert [g["decay"] for g in groups] == [True, False]
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert not decay & no_decay
    named = dict(model.named_parameters())
    trainable = {id(p) for p in named.values() if p.requires_grad}
    assert decay | no_decay == trainable  # every trainable parameter once; frozen ones never

    for name, p in named.items():
        if not p.requires_grad:
            assert name.endswith("weight_g") and norm_last_layer
            continue
        if name.endswith(".bias") or p.ndim == 1 or "norm" in name.split(".")[-2]:
            assert id(p) in no_decay, name
        elif name.endswith("weight_g"):
            assert id(p) in no_decay, name  # learnt weight-norm gains
        elif p.ndim == 2:
            assert id(p) in decay, name  # weight matrices
    # the expected members are there
    must_no_decay = [
        "backbone.norm.weight",
        "backbone.blocks.0.norm1.weight",
        "loss_log_vars",
        "backbone.blocks.0.attn.qkv.bias",
        "recon_head.to_pixels.bias",
    ]
    for name in must_no_decay:
        assert id(named[name]) in no_decay, name
    for name in [
        "backbone.blocks.0.attn.qkv.weight",
        "concept_head.mlp.0.weight",
        "concept_head.patch_layer.weight_v",
        "recon_head.mlp.4.weight",
    ]:
        assert id(named[name]) in decay, name
