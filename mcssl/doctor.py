"""``mcssl doctor``: what this environment has and whether mcssl can work in it."""

from __future__ import annotations

import os
import platform
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass
class Check:
    name: str
    value: str
    ok: bool = True
    essential: bool = True  # a failed essential check makes `mcssl doctor` exit 1


def _version(dist: str) -> Check:
    try:
        return Check(dist, metadata.version(dist))
    except metadata.PackageNotFoundError:
        return Check(dist, "not installed", ok=False, essential=dist != "streamlit")


def _faiss() -> list[Check]:
    import faiss

    from mcssl.explore.index import gpu_available

    gpu = gpu_available()
    return [
        Check("faiss", faiss.__version__),
        Check("faiss GPU", "yes (GPU indexes)" if gpu else "no (CPU indexes)", essential=False),
    ]


def _devices() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        cpu = f"{os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads"
        none = "not available (training and analysis run on the CPU)"
        return [Check("CUDA", none, essential=False), Check("CPU", cpu)]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [
        Check("CUDA", f"{torch.version.cuda}; {len(names)} x {names[0]}"),
        Check("bf16", "supported" if torch.cuda.is_bf16_supported() else "not supported"),
    ]


def _checkpoint() -> Check:
    from mcssl.explore.encoder import EncoderError, load_encoder

    try:
        enc = load_encoder("default")
    except EncoderError as e:
        return Check("default checkpoint", str(e), ok=False)
    i = enc.info
    steps = f", {i['steps']} steps" if i.get("steps") else ""
    return Check(
        "default checkpoint",
        f"loads ({i.get('arch')}/{i.get('patch_size')}, K={i.get('num_concepts')}{steps})",
    )


def _runs_folder() -> Check:
    runs = Path(os.environ.get("MCSSL_RUNS", "runs")).expanduser().resolve()
    try:
        runs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runs):
            pass
    except OSError as e:
        return Check("runs folder", f"{runs}: not writable ({e.strerror})", ok=False)
    return Check("runs folder", f"{runs}: writable")


def report() -> list[Check]:
    import torch

    checks = [Check("python", platform.python_version()), Check("torch", torch.__version__)]
    checks += [_version(d) for d in ("timm", "streamlit")]
    checks += _faiss() + _devices() + [_checkpoint(), _runs_folder()]
    return checks


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'ok ' if c.ok else 'XX '} {c.name:<{width}}  {c.value}" for c in checks]
    bad = [c for c in checks if not c.ok and c.essential]
    lines.append("all essential checks passed" if not bad else f"{len(bad)} problem(s) above")
    return "\n".join(lines)
