"""Training checkpoints (plain data, ``weights_only`` loadable) and the teacher export."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mcssl.config import Config, ModelConfig, config_from_dict

EXPORT_FORMAT = "mcssl-teacher/1"
DEFAULT_KEYS = ("resolution", "layer", "facet")  # stored as metadata default_<name>


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; one-line message."""


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A ``last.pt`` (or a run folder holding one), loaded without unpickling code."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt / foreign files
        raise CheckpointError(
            f"{path} is not a readable mcssl checkpoint ({type(e).__name__})"
        ) from None
    if not isinstance(state, dict) or "teacher" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not an mcssl training checkpoint (no teacher/config)")
    return state


def export_teacher(run: str | Path, out: str | Path, dtype: str = "fp32") -> dict[str, str]:
    """Teacher backbone + patch-concept head + centre -> ``.safetensors`` with metadata.

    Keys: ``backbone.*`` (loads strictly into the timm model), ``head.*`` and ``center``."""
    state = load_training_state(run)
    cfg: Config = config_from_dict(state["config"])
    tensors = {k: v for k, v in state["teacher"].items()}
    tensors = {k.replace("concept_head.", "head.", 1): v for k, v in tensors.items()}
    tensors["center"] = state["patch_loss"]["center"]
    cast = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    tensors = {k: v.to(cast).contiguous() for k, v in tensors.items()}
    meta = {
        "format": EXPORT_FORMAT,
        "arch": cfg.model.arch,
        "img_size": str(cfg.model.img_size),
        "patch_size": str(cfg.model.patch_size),
        "embed_dim": str(tensors["backbone.pos_embed"].shape[-1]),
        "num_concepts": str(cfg.model.num_concepts),
        "teacher_temp": str(cfg.loss.teacher_temp),
        "recipe": cfg.recipe,
        "steps": str(state["step"]),
        "epochs": str(state["epoch"]),
        "data": state.get("data", ""),
        "dtype": dtype,
        "config": json.dumps(cfg.to_dict()),
    }
    _write_safetensors(tensors, meta, Path(out))
    return meta


def _write_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)  # a shareable file, like any other output
    os.replace(tmp, out)


def timm_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The ``timm.create_model`` keyword arguments of the backbone (as mcssl.models builds
    it, less the training-only drop path): no classifier, the run's image and patch size."""
    sizes = {k: getattr(model, k) for k in ("embed_dim", "depth", "num_heads") if getattr(model, k)}
    return {
        "num_classes": 0,
        "img_size": model.img_size,
        "patch_size": model.patch_size,
        "dynamic_img_size": True,
        **sizes,
    }


def export_timm(run: str | Path, out: str | Path, dtype: str = "fp32") -> dict[str, Any]:
    """The teacher backbone as a plain timm state dict: ``out`` (.safetensors, or .pth /
    .pt for torch.save) plus ``out`` with suffix .json holding the model name and kwargs, so

        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=out), **kwargs)

    loads it (the safetensors metadata holds the same)."""
    out = Path(out)
    if out.suffix not in (".safetensors", ".pth", ".pt"):
        raise CheckpointError(f"--format timm writes .safetensors, .pth or .pt, not {out.name}")
    state = load_training_state(run)
    cfg: Config = config_from_dict(state["config"])
    cast = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    prefix = "backbone."
    tensors = {
        k[len(prefix) :]: v.to(cast).contiguous()
        for k, v in state["teacher"].items()
        if k.startswith(prefix)
    }
    info = {
        "format": "timm",
        "model_name": cfg.model.arch,
        "kwargs": timm_kwargs(cfg.model),
        "recipe": cfg.recipe,
        "steps": int(state["step"]),
        "dtype": dtype,
    }
    if out.suffix == ".safetensors":
        meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in info.items()}
        _write_safetensors(tensors, meta, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(tensors, out)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def store_defaults(path: str | Path, defaults: dict[str, int | str], note: str = "") -> None:
    """Writes ``defaults`` (resolution / layer / facet) into an export's metadata as
    ``default_<name>`` (and ``note`` as ``defaults_from``). The tensors are copied unchanged
    into a temp file beside it, which then replaces the file (a reader never sees half of it)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable .safetensors export ({e})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{path}: defaults are stored in an mcssl export (.safetensors); export the run "
            "first: mcssl export RUN --out FILE.safetensors"
        )
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise CheckpointError(f"unknown default(s) {', '.join(unknown)}; expected {DEFAULT_KEYS}")
    meta.update({f"default_{k}": str(v) for k, v in defaults.items()})
    if note:
        meta["defaults_from"] = note
    try:
        _write_safetensors(tensors, meta, path)
    except (SafetensorError, OSError) as e:
        msg = f"{path}: cannot write the defaults ({e}); the file is unchanged"
        raise CheckpointError(msg) from None
