"""Shared fixtures: the smoke recipe and its tiny model."""

from __future__ import annotations

import pytest

from mcssl.config import Config, ModelConfig, load_config


@pytest.fixture
def smoke_cfg() -> Config:
    return load_config("smoke")


@pytest.fixture
def tiny_model_cfg(smoke_cfg: Config) -> ModelConfig:
    return smoke_cfg.model
