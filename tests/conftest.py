"""Shared fixtures: the smoke recipe and its tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcssl.config import Config, ModelConfig, load_config


@pytest.fixture
def smoke_cfg() -> Config:
    return load_config("smoke")


@pytest.fixture
def tiny_model_cfg(smoke_cfg: Config) -> ModelConfig:
    return smoke_cfg.model


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained for one epoch of the smoke recipe (shared by the whole session)."""
    from mcssl.evaluation.online import online_monitors
    from mcssl.train import train

    out = tmp_path_factory.mktemp("smoke") / "run"
    cfg = load_config("smoke", ["optim.epochs=1"])
    train(cfg, out, monitors=online_monitors(cfg))
    return out


@pytest.fixture(scope="session")
def smoke_export(smoke_run: Path) -> Path:
    """The smoke run's teacher exported to .safetensors."""
    from mcssl.checkpoint import export_teacher

    out = smoke_run.parent / "teacher.safetensors"
    export_teacher(smoke_run, out)
    return out


@pytest.fixture
def scene_folder(tmp_path: Path) -> Path:
    """Four generated scenes written as a labelled folder (images/ + masks/), as a user's."""
    import numpy as np
    from PIL import Image

    from mcssl.evaluation.concepts import load_benchmark

    root = tmp_path / "scenes"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, item in enumerate(load_benchmark("synthetic:4", 0)):
        item.image.save(root / "images" / f"s{i}.png")
        Image.fromarray(item.mask.astype(np.uint8)).save(root / "masks" / f"s{i}.png")
    return root
