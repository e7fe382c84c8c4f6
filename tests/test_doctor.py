"""`mcssl doctor` reports this environment as it is."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import faiss
import pytest
import torch

from mcssl.cli import main


def _lines(capsys: pytest.CaptureFixture) -> dict[str, str]:
    out = capsys.readouterr().out.splitlines()
    return {ln[4:].split("  ")[0].strip(): ln for ln in out if ln[:3] in ("ok ", "XX ")}


def test_doctor_matches_the_environment(
    smoke_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(smoke_export))
    monkeypatch.setenv("MCSSL_RUNS", str(tmp_path / "runs"))
    assert main(["doctor"]) == 0
    got = _lines(capsys)
    assert got["python"].endswith(platform.python_version())
    assert got["torch"].endswith(torch.__version__)
    assert got["timm"].endswith(metadata.version("timm"))
    assert got["streamlit"].endswith(metadata.version("streamlit"))
    assert got["faiss"].endswith(faiss.__version__)
    has_gpu_faiss = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    assert ("yes" in got["faiss GPU"]) == has_gpu_faiss
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in got["CUDA"] and "bf16" in got
    else:
        assert "not available" in got["CUDA"] and f"{torch.get_num_threads()} threads" in got["CPU"]
    assert got["default checkpoint"].startswith("ok ")
    assert "loads (vit_tiny_patch16_224/8, K=64" in got["default checkpoint"]
    assert got["runs folder"].startswith("ok ") and str(tmp_path / "runs") in got["runs folder"]


def test_doctor_names_what_is_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("MCSSL_DEFAULT_CHECKPOINT", str(tmp_path / "gone.safetensors"))
    monkeypatch.setenv("MCSSL_RUNS", str(blocker / "runs"))  # cannot be created
    assert main(["doctor"]) == 1
    got = _lines(capsys)
    assert (
        got["default checkpoint"].startswith("XX ")
        and "gone.safetensors" in got["default checkpoint"]
    )
    assert got["runs folder"].startswith("XX ") and "not writable" in got["runs folder"]
