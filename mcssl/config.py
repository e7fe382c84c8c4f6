"""One config source: dataclass defaults <- YAML recipe <- dotted ``key=value`` overrides.

The resolved config is saved next to every run (``RUN_DIR/config.yaml``) and inside every
checkpoint, so a run can always be reproduced or resumed from its own folder.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config problem the user can fix; the message is one line."""


@dataclass
class ModelConfig:
    arch: str = "vit_small_patch16_224"  # any timm VisionTransformer name
    patch_size: int = 16
    img_size: int = 224
    embed_dim: int = 0  # 0 = the architecture's own; set to shrink a model (smoke tests)
    depth: int = 0
    num_heads: int = 0
    drop_path: float = 0.1
    num_concepts: int = 8192  # K, the pseudo-concepts of the patch-concept head
    head_hidden: int = 2048
    head_bottleneck: int = 256
    norm_last_layer: bool = True  # weight-norm gain frozen at 1
    recon_hidden: int = 2048
    recon_bottleneck: int = 256
    cls_num_concepts: int = 8192  # only used when loss.cls_term is on
    grey_input: bool = False  # the backbone sees luminance only, in training and read-out


@dataclass
class GMMLConfig:
    ratio: list[float] = field(default_factory=lambda: [0.4, 0.8])  # of the patches
    max_block_frac: float = 0.3  # largest block side, as a fraction of the grid side
    drop_weight: float = 1.0  # relative frequency of each block transformation
    replace_weight: float = 1.0
    colour_weight: float = 1.0
    choose_per: str = "block"  # block | image: one transformation per block, or per image (ref)
    replace_ratio: list[float] = field(default_factory=list)  # choose_per=image: [] = ratio
    drop_fill: str = "noise"  # noise | zeros (the reference; zeros = the mean colour)


@dataclass
class LossConfig:
    recon_type: str = "l1"  # l1 | mse
    recon_region: str = "all"  # all | corrupted
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    center_momentum: float = 0.9
    cls_term: bool = False  # DINO image-level loss on the CLS token (reference code)
    combine: str = "average"  # average (paper) | sum (reference code) | fixed | uncertainty
    recon_weight: float = 1.0  # used by combine=fixed
    concept_weight: float = 1.0
    cls_weight: float = 1.0


@dataclass
class DataConfig:
    path: str = ""  # image folder, a .txt file list, or "samples" (bundled sample photos)
    repeat: int = 1  # virtual epoch length = repeat x number of images
    global_crops: int = 2
    local_crops: int = 0  # multi-crop; local crops only feed the CLS term
    local_size: int = 96
    global_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.25])
    # per global view (view 1, view 2, ...; the last value repeats): blur and solarisation
    # probabilities; the reference's asymmetric views are [1.0, 0.1] and [0.0, 0.2]
    global_blur: list[float] = field(default_factory=lambda: [0.5])
    global_solarize: list[float] = field(default_factory=lambda: [0.0])
    local_blur: float = 0.5
    workers: int = 8
    # plain: workers decode + augment (PIL); device: workers only read, the augmentations run
    # batched on the training device and JPEGs are decoded there (nvjpeg) on CUDA
    pipeline: str = "plain"
    max_image_pixels: int = 100_000_000  # decompression-bomb guard


@dataclass
class OptimConfig:
    epochs: int = 500
    batch_size: int = 64  # per process
    base_lr: float = 5e-4  # scaled by total batch / 256
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # max gradient norm; 0 disables
    clip_mode: str = "global"  # global (one norm over all) | per_param (each; the reference)
    freeze_last_layer_epochs: int = 1
    # which last layers that freeze holds: patch (the concept head's) and/or cls (the CLS
    # term's); the reference freezes only cls, the paper's concept head is the patch layer
    freeze_last_layer_heads: list[str] = field(default_factory=lambda: ["patch", "cls"])
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on capable GPUs, else fp32) | fp32 | bf16 | fp16
    compile: bool = False
    log_every: int = 10  # steps
    tensorboard: bool = False  # rank 0 also writes TensorBoard events to RUN_DIR/tb
    save_every: int = 500  # steps; last.pt is also written at every epoch end
    keep_every_epochs: int = 0  # also keep checkpoint-EPOCH.pt every N epochs; 0 = never
    preview_every: int = 500  # steps; 0 = never
    monitor_every: int = 500  # steps between online concept scores (rank 0); 0 = never
    monitor_scenes: int = 16  # generated scenes the concept score is measured on
    knn_train: str = ""  # labelled ImageFolder for the online kNN monitor ("" = off)
    knn_val: str = ""  # its held-out twin (same class folders)


@dataclass
class ShortcutConfig:
    """Levers against the per-image shortcut (docs/METHOD_NOTES.md; beyond the paper). All off
    by default: every recipe without a ``shortcut:`` section trains exactly as before."""

    sinkhorn_iters: int = 0  # > 0: teacher targets by Sinkhorn-Knopp over the global batch
    student_colour: bool = False  # student copy: same crop, its own colour jitter/grey/blur
    student_hue: float = 0.0  # > 0: the student copy's hue jitter range (turns; 0.5 = any hue)
    image_centring: float = 0.0  # subtract this fraction of each image's mean teacher logit
    norm_pix: bool = False  # reconstruct per-patch normalised pixels (MAE's norm-pix)
    cross_view: bool = False  # also predict the other global crop's targets at the same place
    cross_image: float = 0.0  # share of the concept term aimed at nearest tokens of other images
    cross_image_centred: bool = False  # find those neighbours after removing each image's mean
    mosaic: bool = False  # each training input: quadrants of four images of the batch
    teacher_grey: float = 0.0  # chance per image that the teacher sees its view in grey
    recon_grey: float = 0.0  # chance per image that the reconstruction target is in grey
    # > 0: weight of a term in which each student token predicts the clean view's texture
    # statistics over its neighbourhood of cells (mcssl.images.texture_map; colour-blind)
    texture_target: float = 0.0
    texture_window: int = 3  # that neighbourhood's side in cells (odd; 1 = the cell alone)


@dataclass
class Config:
    recipe: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    gmml: GMMLConfig = field(default_factory=GMMLConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "gmml.choose_per": ("block", "image"),
    "gmml.drop_fill": ("noise", "zeros"),
    "loss.recon_type": ("l1", "mse"),
    "loss.recon_region": ("all", "corrupted"),
    "loss.combine": ("average", "sum", "fixed", "uncertainty"),
    "data.pipeline": ("plain", "device"),
    "optim.clip_mode": ("global", "per_param"),
    "run.device": ("auto", "cpu", "cuda"),
    "run.precision": ("auto", "fp32", "bf16", "fp16"),
}


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check ``value`` against a field type, converting int -> float where harmless."""
    origin = typing.get_origin(typ)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key} must be a list, got {value!r}")
        (item,) = typing.get_args(typ) or (Any,)
        return [_coerce(v, item, key) for v in value]
    if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if typ is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if typ is Any or (isinstance(typ, type) and isinstance(value, typ)):
        if typ is int and isinstance(value, bool):
            raise ConfigError(f"config key {key} must be int, got {value!r}")
        return value
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"config key {key} must be {name}, got {value!r}")


def _merge(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Recursively set dataclass fields from a mapping; unknown keys are an error."""
    hints = typing.get_type_hints(type(obj))
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError(f"unknown config key(s): {names} (known: {', '.join(sorted(known))})")
    for k, v in data.items():
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"config key {prefix}{k} must be a mapping, got {v!r}")
            _merge(current, v, f"{prefix}{k}.")
        else:
            setattr(obj, k, _coerce(v, hints[k], prefix + k))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.epochs=3", "gmml.ratio=[0.5,0.7]"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    flat = {
        f"{s}.{k}": v
        for s, sub in cfg.to_dict().items()
        if isinstance(sub, dict)
        for k, v in sub.items()
    }
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"config key {key} must be one of {choices}, got {flat[key]!r}")
    lo, hi = (cfg.gmml.ratio + [None, None])[:2]
    if len(cfg.gmml.ratio) != 2 or not 0.0 <= lo <= hi < 1.0:
        raise ConfigError(
            f"gmml.ratio must be [low, high] with 0 <= low <= high < 1, got {cfg.gmml.ratio}"
        )
    d = cfg.data
    probs = [*d.global_blur, *d.global_solarize, d.local_blur]
    if not d.global_blur or not d.global_solarize or not all(0 <= q <= 1 for q in probs):
        raise ConfigError(
            "data.global_blur / global_solarize must be non-empty lists of probabilities in "
            f"[0, 1] and data.local_blur one, got {d.global_blur}, {d.global_solarize}, "
            f"{d.local_blur}"
        )
    rr = cfg.gmml.replace_ratio
    if rr and (len(rr) != 2 or not 0.0 <= rr[0] <= rr[1] < 1.0):
        raise ConfigError(
            f"gmml.replace_ratio must be [] or [low, high] with 0 <= low <= high < 1, got {rr}"
        )
    if cfg.model.img_size % cfg.model.patch_size:
        raise ConfigError(
            f"model.img_size {cfg.model.img_size} is not a multiple of "
            f"model.patch_size {cfg.model.patch_size}"
        )
    if cfg.data.local_crops and cfg.data.local_size % cfg.model.patch_size:
        raise ConfigError(
            f"data.local_size {cfg.data.local_size} is not a multiple of "
            f"model.patch_size {cfg.model.patch_size}"
        )
    if cfg.data.local_crops and not cfg.loss.cls_term:
        raise ConfigError(
            "data.local_crops > 0 needs loss.cls_term=true (local crops only feed the CLS term)"
        )
    if cfg.data.global_crops < 1 or cfg.optim.batch_size < 1 or cfg.optim.epochs < 1:
        raise ConfigError("data.global_crops, optim.batch_size and optim.epochs must be >= 1")
    if cfg.loss.cls_term and cfg.data.global_crops + cfg.data.local_crops < 2:
        raise ConfigError("loss.cls_term needs at least two views (global_crops + local_crops)")
    if not cfg.data.path:
        raise ConfigError(
            "data.path is empty: give an image folder, a file list or 'samples' "
            "(e.g. data.path=/data/images)"
        )
    bad = sorted(set(cfg.optim.freeze_last_layer_heads) - {"patch", "cls"})
    if bad:
        raise ConfigError(
            f"optim.freeze_last_layer_heads takes 'patch' and/or 'cls', got {', '.join(bad)}"
        )
    _validate_shortcut(cfg)
    if bool(cfg.run.knn_train) != bool(cfg.run.knn_val):
        raise ConfigError("the kNN monitor needs both run.knn_train and run.knn_val")


def _validate_shortcut(cfg: Config) -> None:
    sc = cfg.shortcut
    if sc.sinkhorn_iters < 0 or not 0.0 <= sc.image_centring <= 1.0:
        raise ConfigError(
            "shortcut.sinkhorn_iters must be >= 0 and shortcut.image_centring in [0, 1], got "
            f"{sc.sinkhorn_iters} and {sc.image_centring}"
        )
    if not 0.0 <= sc.cross_image <= 1.0:
        raise ConfigError(f"shortcut.cross_image must be in [0, 1], got {sc.cross_image}")
    for key in ("teacher_grey", "recon_grey"):
        if not 0.0 <= getattr(sc, key) <= 1.0:
            raise ConfigError(f"shortcut.{key} must be in [0, 1], got {getattr(sc, key)}")
    if sc.texture_target < 0:
        raise ConfigError(f"shortcut.texture_target must be >= 0, got {sc.texture_target}")
    if sc.texture_window < 1 or sc.texture_window % 2 == 0:
        raise ConfigError(f"shortcut.texture_window must be odd and >= 1, got {sc.texture_window}")
    if sc.cross_image_centred and not sc.cross_image:
        raise ConfigError("shortcut.cross_image_centred needs shortcut.cross_image > 0")
    if sc.mosaic and (sc.cross_view or sc.cross_image):
        raise ConfigError("shortcut.mosaic does not combine with cross_view or cross_image")
    if sc.mosaic and (cfg.model.img_size // 2) % cfg.model.patch_size:
        raise ConfigError("shortcut.mosaic needs half of model.img_size to be whole patches")
    if (sc.student_colour or sc.cross_view) and cfg.data.pipeline != "plain":
        raise ConfigError(
            "shortcut.student_colour and shortcut.cross_view need data.pipeline=plain"
        )
    if not 0.0 <= sc.student_hue <= 0.5 or (sc.student_hue and not sc.student_colour):
        raise ConfigError(
            f"shortcut.student_hue must be in [0, 0.5] and needs shortcut.student_colour=true, "
            f"got {sc.student_hue}"
        )
    if sc.cross_view and cfg.data.global_crops < 2:
        raise ConfigError("shortcut.cross_view needs data.global_crops >= 2")


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe is a YAML path, or the name of one in mcssl/configs (with or without .yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config {name_or_path!r} not found (a YAML path or one of: {known})")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Dotted ``key=value`` overrides on an existing config, then the value checks."""
    _merge(cfg, parse_overrides(overrides))
    validate(cfg)
    return cfg


def _deep_update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mapping by mapping (lists and scalars are replaced)."""
    out = dict(base)
    for k, v in over.items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = _deep_update(out[k], v) if both else v
    return out


def _recipe_data(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe file's mapping, on top of its ``base:`` recipe's (a name or a path, resolved
    next to the file first), so a recipe can say only how it differs from another."""
    if path.resolve() in seen:
        chain = " -> ".join(q.stem for q in (*seen, path))
        raise ConfigError(f"config {path}: its base recipes form a loop ({chain})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {path}: base must be a recipe name or path, got {base!r}")
    beside = path.parent / base
    base_path = beside if beside.is_file() else resolve_recipe(base)
    return _deep_update(_recipe_data(base_path, (*seen, path.resolve())), data)


def load_config(recipe: str | None = None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if recipe:
        path = resolve_recipe(recipe)
        data = _recipe_data(path)
        data.setdefault("recipe", path.stem)
        _merge(cfg, data)
    return apply_overrides(cfg, overrides or [])


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, data)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
