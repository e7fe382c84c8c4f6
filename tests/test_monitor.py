"""Collapse signals and the online concept score: they fire on a collapsed teacher, stay quiet
on a healthy run, and the concept score is logged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from mcssl.config import load_config
from mcssl.train import Trainer, monitor


def test_concept_health_on_hand_made_distributions() -> None:
    k = 16
    uniform = torch.full((10, k), 1 / k)
    h = monitor.concept_health(uniform, torch.zeros(10, k))
    assert h["teacher_entropy_frac"] == pytest.approx(1.0) and h[
        "concepts_in_use"
    ] == pytest.approx(k)
    one_hot = torch.zeros(10, k)
    one_hot[:, 3] = 1
    student = torch.zeros(10, k)
    student[:5, 3] = 1  # half the tokens agree with the teacher
    h = monitor.concept_health(one_hot, student)
    assert h["teacher_entropy"] == pytest.approx(0, abs=1e-6)
    assert h["concepts_in_use"] == pytest.approx(1.0) and h["agreement"] == pytest.approx(0.5)
    spread = torch.eye(k)  # every token sure, each of a different concept: healthy
    h = monitor.concept_health(spread, spread)
    assert h["concepts_in_use"] == pytest.approx(k) and h["agreement"] == 1.0
    assert [monitor.collapse(monitor.concept_health(p, p)) for p in (uniform, one_hot, spread)] == [
        "uniform", "dominant", None,
    ]  # fmt: skip


def test_recon_split_separates_corrupted_and_clean_patches() -> None:
    target = torch.zeros(1, 3, 4, 4)
    recon = torch.zeros(1, 3, 4, 4)
    recon[..., :2, :2] = 1.0  # error only in the top-left patch
    mask = torch.tensor([[[True, False], [False, False]]])
    got = monitor.recon_split(recon, target, mask)
    assert got == {"recon_corrupted": 1.0, "recon_clean": 0.0}


def _fit_with_teacher_output(tmp_path: Path, logits: torch.Tensor | None) -> list[dict]:
    cfg = load_config("smoke", ["optim.epochs=1", "run.log_every=1", "run.monitor_every=9"])
    tr = Trainer(cfg, tmp_path / "run")
    if logits is not None:  # the teacher's head says the same thing for every token
        tr.teacher.concept_head.register_forward_hook(
            lambda m, args, out: logits.to(out.dtype).expand_as(out).clone()
        )
    tr.fit()
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]


def test_collapsed_teachers_are_flagged_and_warned_about_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    k = load_config("smoke").model.num_concepts
    with caplog.at_level(logging.WARNING, logger="mcssl.train"):
        rows = _fit_with_teacher_output(tmp_path / "u", torch.zeros(k))
    assert [r["collapse"] for r in rows] == ["uniform"] * 9
    assert all(r["teacher_entropy_frac"] > 0.999 for r in rows)
    warnings = [r.message for r in caplog.records if "collapsed" in r.message]
    assert len(warnings) == 1 and "uniform" in warnings[0] and "teacher_temp" in warnings[0]

    peak = torch.zeros(k)
    peak[7] = 10.0
    rows = _fit_with_teacher_output(tmp_path / "d", peak)
    assert [r["collapse"] for r in rows] == ["dominant"] * 9
    assert all(r["concepts_in_use"] < 1.5 for r in rows)


def test_a_healthy_run_is_quiet_and_logs_its_concept_score(smoke_run: Path) -> None:
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").open()]
    assert rows and all(r["collapse"] is None for r in rows)
    assert all(r["concepts_in_use"] > monitor.DOMINANT_MIN for r in rows)
    assert all(0 <= r["agreement"] <= 1 and r["center_norm"] > 0 for r in rows)
    scored = [r for r in rows if "concept_ari" in r]
    assert [r["step"] for r in scored] == [9]  # monitor_every=10 > 9 steps: scored at the end
    assert 0 < scored[0]["concept_miou"] <= 1 and -1 <= scored[0]["concept_ari"] <= 1
    assert 0 < scored[0]["concept_image_share"] < 1  # the per-image shortcut, measured online
