"""Load a ViT encoder (+ patch-concept head) from any checkpoint a user is likely to hold.

Formats: ``default`` (the bundled export), our ``.safetensors`` export, our run folder or
``last.pt``, a reference MC-SSL checkpoint, DINO / iBOT teacher checkpoints and plain timm
ViT state dicts. Keys are mapped explicitly and loaded strictly; pickles are read with
``weights_only=True`` and a small allowlist, never unpickled freely.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from mcssl.checkpoint import DEFAULT_KEYS, EXPORT_FORMAT
from mcssl.config import ModelConfig, config_from_dict
from mcssl.models import ConceptHead, build_backbone

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "default.safetensors"
SAFE_GLOBALS = [argparse.Namespace]  # reference / DINO checkpoints pickle their args
# feature facets (mcssl.explore.features.block_features); the last needs a patch-concept head
FACETS = ("tokens", "keys", "keys+concepts")
HEAD_FACETS = ("keys+concepts",)
log = logging.getLogger("mcssl")


ACCEPTED = (
    "expected an mcssl export (.safetensors), a run folder or its last.pt, a reference "
    "MC-SSL / DINO / iBOT checkpoint or a timm ViT state dict (.pt, .pth, .safetensors)"
)


class EncoderError(ValueError):
    """A checkpoint that cannot be used as an encoder; one-line message."""


@dataclass
class Encoder:
    """A frozen teacher: backbone, optional patch-concept head, centre and temperature."""

    backbone: VisionTransformer
    head: ConceptHead | None
    center: torch.Tensor | None
    teacher_temp: float
    info: dict[str, str] = field(default_factory=dict)  # architecture facts for display
    digest: str = ""  # identifies the weights (cache key)
    # the checkpoint's stored best settings (resolution, layer, facet; `mcssl eval defaults`)
    defaults: dict[str, int | str] = field(default_factory=dict)
    _casts: dict[torch.dtype, Encoder] = field(default_factory=dict, repr=False)

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_embed.patch_size[0])

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    @property
    def has_concepts(self) -> bool:
        return self.head is not None

    @property
    def device(self) -> torch.device:
        return self.backbone.cls_token.device

    def cast(self, dtype: torch.dtype) -> Encoder:
        """This encoder with backbone and head weights in ``dtype`` (made once, then kept);
        the centre stays fp32 (probabilities are computed in fp32)."""
        if dtype == self.backbone.cls_token.dtype:
            return self
        if dtype not in self._casts:
            backbone = copy.deepcopy(self.backbone).to(dtype)
            head = None if self.head is None else copy.deepcopy(self.head).to(dtype)
            self._casts[dtype] = Encoder(
                backbone, head, self.center, self.teacher_temp, self.info, self.digest,
                self.defaults,
            )  # fmt: skip
        return self._casts[dtype]

    def to(self, device: str | torch.device) -> Encoder:
        self._casts.clear()
        self.backbone.to(device)
        if self.head is not None:
            self.head.to(device)
            self.center = self.center.to(device)
        return self

    @torch.inference_mode()
    def tokens(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """x: (B, 3, H, W) -> data tokens (B, H/p * W/p, D) after block ``layer`` (normed)."""
        idx = layer % self.depth
        out = self.backbone.forward_intermediates(
            x,
            indices=[idx],
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            stop_early=True,
        )
        return out[0]

    @torch.inference_mode()
    def concept_probs(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (..., D) from the last block -> pseudo-concept probabilities (..., K)."""
        if self.head is None:
            raise EncoderError(
                f"{self.info.get('source', 'this checkpoint')} has no patch-concept head: "
                "pseudo-concepts are unavailable (k-means concepts and retrieval still work)"
            )
        logits = self.head(tokens).float()
        return torch.softmax((logits - self.center) / self.teacher_temp, dim=-1)


# ---- helpers --------------------------------------------------------------------------


def _strip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True), with an error that names the mismatched keys."""
    own = set(module.state_dict())
    missing, unexpected = sorted(own - set(sd)), sorted(set(sd) - own)
    if missing or unexpected:
        parts = ([f"missing {_few(missing)}"] if missing else []) + (
            [f"unexpected {_few(unexpected)}"] if unexpected else []
        )
        raise EncoderError(f"{what}: keys do not match: {'; '.join(parts)}")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        shape = re.search(r"size mismatch for ([^:]+): .*", str(e))
        raise EncoderError(
            f"{what}: {shape.group(0) if shape else str(e).splitlines()[0]}"
        ) from None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def vit_from_state_dict(sd: dict[str, torch.Tensor], what: str) -> VisionTransformer:
    """Builds the timm ViT a plain state dict describes (dims, depth, patch, grid) and loads
    it strictly. Heads are assumed to be 64-dimensional (true for the standard ViTs)."""
    try:
        dim, _, p, _ = sd["patch_embed.proj.weight"].shape
        n_pos = sd["pos_embed"].shape[1]
    except KeyError as e:
        raise EncoderError(f"{what}: not a ViT state dict (no {e.args[0]})") from None
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    prefix = 1 if "cls_token" in sd else 0
    side = int(round((n_pos - prefix) ** 0.5))
    model = VisionTransformer(
        img_size=side * p,
        patch_size=p,
        embed_dim=dim,
        depth=depth,
        num_heads=max(1, dim // 64),
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        class_token=prefix == 1,
        init_values=1e-5 if "blocks.0.ls1.gamma" in sd else None,
        num_classes=0,
        dynamic_img_size=True,
        weight_init="skip",  # every weight is loaded next
    )
    _load_strict(model, sd, what)
    return model


# ---- formats --------------------------------------------------------------------------


def _from_export(path: Path) -> Encoder:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118
    if meta.get("format") != EXPORT_FORMAT:
        return _from_plain(sd, path, "timm ViT (safetensors)")
    mcfg = config_from_dict(json.loads(meta["config"])).model
    return _from_ours(mcfg, sd, float(meta["teacher_temp"]), path, meta)


def stored_defaults(meta: dict[str, str], depth: int, where: str) -> dict[str, int | str]:
    """The ``default_*`` metadata of an export -> {resolution, layer, facet} that are valid for
    this model; an invalid value (hand-edited, another model's) is left out with a warning, so
    the checkpoint still loads with the built-in defaults."""
    out: dict[str, int | str] = {}
    for name in DEFAULT_KEYS:
        raw = meta.get(f"default_{name}")
        if raw is None:
            continue
        value: int | str | None = raw if name == "facet" else _int(raw)
        ok = {
            "resolution": lambda v: isinstance(v, int) and 16 <= v <= 4096,
            "layer": lambda v: isinstance(v, int) and -depth <= v < depth,
            "facet": lambda v: v in FACETS,
        }[name](value)
        if ok:
            out[name] = value
        else:
            want = {"resolution": "16..4096", "layer": f"-{depth}..{depth - 1}"}.get(
                name, " or ".join(FACETS)
            )
            log.warning("%s: ignoring stored default_%s=%r (expected %s)", where, name, raw, want)
    return out


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _from_ours(
    mcfg: ModelConfig, sd: dict, teacher_temp: float, path: Path, meta: dict[str, str]
) -> Encoder:
    backbone = build_backbone(ModelConfig(**{**vars(mcfg), "drop_path": 0.0}), init=False)
    _load_strict(backbone, _strip(sd, "backbone."), f"{path} backbone")
    head_sd = _strip(sd, "head.")
    cls_k = head_sd["cls_layer.weight_v"].shape[0] if "cls_layer.weight_v" in head_sd else 0
    head = ConceptHead(
        backbone.num_features,
        mcfg.num_concepts,
        mcfg.head_hidden,
        mcfg.head_bottleneck,
        mcfg.norm_last_layer,
        cls_k,
    )
    _load_strict(head, head_sd, f"{path} concept head")
    info = {
        "format": "mcssl",
        "arch": mcfg.arch,
        "patch_size": str(backbone.patch_embed.patch_size[0]),
        "img_size": str(mcfg.img_size),
        "num_concepts": str(mcfg.num_concepts),
        "recipe": meta.get("recipe", ""),
        "steps": meta.get("steps", ""),
        "data": meta.get("data", ""),
    }
    defaults = stored_defaults(meta, len(backbone.blocks), str(path))
    center = sd["center"].float().view(-1)
    return Encoder(backbone, head, center, teacher_temp, info, defaults=defaults)


def arch_label(arch: str, patch: int) -> str:
    """The timm name for display, saying so when the recipe overrode the patch size it names
    (``vit_tiny_patch16_224`` trained with patch 8)."""
    named = re.search(r"patch(\d+)", arch)
    return f"{arch}, patch {patch}" if named and int(named.group(1)) != patch else arch


def _from_run(state: dict, path: Path) -> Encoder:
    cfg = config_from_dict(state["config"])
    sd = {k.replace("concept_head.", "head.", 1): v for k, v in state["teacher"].items()}
    sd["center"] = state["patch_loss"]["center"]
    meta = {"recipe": cfg.recipe, "steps": str(state["step"]), "data": state.get("data", "")}
    return _from_ours(cfg.model, sd, cfg.loss.teacher_temp, path, meta)


def _from_plain(sd: dict, path: Path, fmt: str) -> Encoder:
    sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}  # classifier
    backbone = vit_from_state_dict(sd, str(path))
    return Encoder(backbone, None, None, 0.04, _vit_info(backbone, fmt))


def _vit_info(backbone: VisionTransformer, fmt: str) -> dict[str, str]:
    p = backbone.patch_embed.patch_size[0]
    return {
        "format": fmt,
        "arch": f"ViT d={backbone.embed_dim} depth={len(backbone.blocks)}",
        "patch_size": str(p),
        "img_size": str(backbone.patch_embed.img_size[0]),
        "num_concepts": "-",
    }


def _from_teacher_dict(state: dict, path: Path) -> Encoder:
    """Reference MC-SSL, DINO or iBOT: ``state['teacher']`` with backbone.* and head.*."""
    sd = {k.removeprefix("module."): v for k, v in state["teacher"].items()}
    # the reference teacher also carries head_recons.* (reconstruction head): not needed here
    other = sorted(k for k in sd if not k.startswith(("backbone.", "head.", "head_recons.")))
    if other:
        raise EncoderError(f"{path}: unexpected teacher keys {', '.join(other[:6])}")
    bb = _strip(sd, "backbone.")
    bb.pop("masked_embed", None)  # iBOT's learnt mask token: only used in training
    bb = {k: v for k, v in bb.items() if not k.startswith("head.")}
    head_sd = _strip(sd, "head.")
    backbone = vit_from_state_dict(bb, f"{path} backbone")
    if "data_layer.weight_v" not in head_sd:  # DINO / iBOT: no patch-concept head
        fmt = "iBOT teacher" if "last_layer2.weight_v" in head_sd else "DINO teacher"
        return Encoder(backbone, None, None, 0.04, _vit_info(backbone, fmt))
    mapping = {"mlp.": "mlp.", "data_layer.": "patch_layer.", "last_layer.": "cls_layer."}
    mapped = {}
    for k, v in head_sd.items():
        src = next((s for s in mapping if k.startswith(s)), None)
        if src is None:
            raise EncoderError(f"{path}: unexpected reference head key head.{k}")
        mapped[mapping[src] + k[len(src) :]] = v
    k_data, bottleneck = mapped["patch_layer.weight_v"].shape
    k_cls = mapped["cls_layer.weight_v"].shape[0] if "cls_layer.weight_v" in mapped else 0
    head = ConceptHead(
        backbone.embed_dim, k_data, mapped["mlp.0.weight"].shape[0], bottleneck, True, k_cls
    )
    mapped.setdefault("patch_layer.weight_g", torch.ones(k_data, 1))
    if k_cls:
        mapped.setdefault("cls_layer.weight_g", torch.ones(k_cls, 1))
    _load_strict(head, mapped, f"{path} reference head")
    loss = state.get("calc_loss") or {}
    center = loss.get("center_data", torch.zeros(k_data))
    args = state.get("args")
    temp = float(getattr(args, "teacher_temp", 0.04)) if args is not None else 0.04
    info = _vit_info(backbone, "reference MC-SSL") | {"num_concepts": str(k_data)}
    return Encoder(backbone, head, center.float().view(-1), temp, info)


def _torch_load(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise EncoderError(f"{path}: the file is empty")
    if not head.startswith(b"PK") and head[:1] != b"\x80":  # neither torch's zip nor a pickle
        raise EncoderError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the outcome is what counts
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types; none of them may unpickle code
        text = str(e)
        if "central directory" in text or isinstance(e, EOFError) or "truncated" in text:
            msg = "the file is truncated or damaged"
        elif "Unsupported global" in text or "Weights only load failed" in text:
            msg = "it contains objects outside the safe allowlist; refusing to unpickle it"
        else:
            msg = f"unreadable PyTorch checkpoint ({type(e).__name__})"
        raise EncoderError(f"{path}: {msg}") from None
    if not isinstance(obj, dict):
        raise EncoderError(f"{path}: not a state dict or checkpoint (got {type(obj).__name__})")
    return obj


def _from_pickle(path: Path) -> Encoder:
    state = _torch_load(path)
    if "teacher" in state and "config" in state and "patch_loss" in state:
        return _from_run(state, path)
    if isinstance(state.get("teacher"), dict):
        return _from_teacher_dict(state, path)
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    sd = {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}
    return _from_plain(sd, path, "timm ViT state dict")


LOADERS: dict[str, Callable[[Path], Encoder]] = {".safetensors": _from_export}


def resolve_checkpoint(spec: str | Path) -> Path:
    """``default`` -> the bundled file; a run folder -> its last.pt."""
    if str(spec) == "default":
        path = Path(os.environ.get("MCSSL_DEFAULT_CHECKPOINT", DEFAULT_CHECKPOINT))
        if not path.is_file():
            raise EncoderError(
                f"the bundled default checkpoint {path} is missing; pass a checkpoint path "
                "(an export, a run folder or a .pt file)"
            )
        return path
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "last.pt").is_file():
            raise EncoderError(f"{path}: a folder without last.pt; {ACCEPTED}")
        path = path / "last.pt"
    if not path.exists():
        raise EncoderError(f"checkpoint {path} not found; {ACCEPTED}")
    if not path.is_file():
        raise EncoderError(f"{path}: not a regular file; {ACCEPTED}")
    return path


def load_encoder(spec: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Any supported checkpoint -> a frozen, eval-mode Encoder on ``device``."""
    path = resolve_checkpoint(spec)
    try:
        enc = LOADERS.get(path.suffix.lower(), _from_pickle)(path)
    except EncoderError as e:
        raise EncoderError(f"{e}; {ACCEPTED}") from None
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ").splitlines()[0]
        raise EncoderError(
            f"{path}: not a readable safetensors file ({reason}); {ACCEPTED}"
        ) from None
    except (KeyError, IndexError, TypeError, AttributeError, RuntimeError, OSError) as e:
        # a layout none of the loaders expected (a key they rely on is missing, a wrong type)
        what = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}" if str(e) else type(e).__name__
        raise EncoderError(f"{path}: unrecognised checkpoint layout ({what}); {ACCEPTED}") from None
    enc.backbone.eval().requires_grad_(False)
    if enc.head is not None:
        enc.head.eval().requires_grad_(False)
    enc.info["source"] = str(spec)
    enc.digest = _file_digest(path)
    return enc.to(device)
