"""run.tensorboard=true: rank 0 writes every metrics.jsonl scalar, the reconstruction previews
and the concept overlays of the probe photos as TensorBoard events (read back with
tensorboard's own EventAccumulator)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mcssl.config import load_config
from mcssl.evaluation.online import PROBES, online_monitors
from mcssl.train import train


def test_smoke_run_writes_scalars_and_images(tmp_path: Path) -> None:
    over = ["optim.epochs=1", "run.tensorboard=true", "run.monitor_every=4", "run.preview_every=4"]
    cfg = load_config("smoke", over)
    out = tmp_path / "run"
    train(cfg, out, monitors=online_monitors(cfg))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    numeric = {
        k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "time"
    } - {"step"}
    assert {"loss", "loss_concept", "grad_norm", "lr", "concept_ari"} <= numeric
    assert numeric <= set(tags["scalars"]), numeric - set(tags["scalars"])
    for key in ("loss", "grad_norm", "teacher_temp"):  # the same numbers at the same steps
        got = [(e.step, e.value) for e in events.Scalars(key)]
        want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]
        assert got == want, key
    ari = [e.step for e in events.Scalars("concept_ari")]
    assert ari == [r["step"] for r in rows if "concept_ari" in r] == [4, 8, 9]
    previews = events.Images("preview")
    assert (
        [e.step for e in previews]
        == [4, 8]
        == [int(p.stem.split("_")[1]) for p in sorted((out / "previews").glob("*.png"))]
    )
    overlays = [t for t in tags["images"] if t.startswith("concepts/")]
    assert len(overlays) == PROBES
    for tag in overlays:
        imgs = events.Images(tag)
        assert [e.step for e in imgs] == [4, 8, 9]
        assert imgs[0].width > 100 and imgs[0].height > 100
