"""The recipes resolve to what the docs say: reference_vits16 to the reference code's
defaults (docs/METHOD_NOTES.md, table), paper_vits16 to the paper's values and to the very
config it resolved to before issue 15 (a JSON snapshot taken at commit b4beaaf)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcssl.config import CONFIG_DIR, ConfigError, load_config

SNAPSHOT = Path(__file__).parent / "paper_vits16_b4beaaf.json"

# Keys added after the snapshot, each with the default under which paper_vits16 behaves as
# before. A new config field must be declared here (one line) or the snapshot test fails.
NEW_KEYS: dict[str, Any] = {
    "gmml.choose_per": "block",
    "gmml.replace_ratio": [],
    "gmml.drop_fill": "noise",
    "data.global_blur": [0.5],
    "data.global_solarize": [0.0],
    "data.local_blur": 0.5,
    "optim.freeze_last_layer_heads": ["patch", "cls"],
    "optim.clip_mode": "global",
    "run.tensorboard": False,
    "shortcut.sinkhorn_iters": 0,  # issue 13's levers: all off
    "shortcut.student_colour": False,
    "shortcut.student_hue": 0.0,
    "shortcut.image_centring": 0.0,
    "shortcut.norm_pix": False,
    "shortcut.cross_view": False,
    "shortcut.cross_image": 0.0,
    "shortcut.cross_image_centred": False,
    "shortcut.mosaic": False,
    "shortcut.teacher_grey": 0.0,
    "shortcut.recon_grey": 0.0,
    "shortcut.texture_target": 0.0,
    "shortcut.texture_window": 3,
    "model.grey_input": False,
}

# Every value reference_vits16 sets, and where the reference code has it.
REFERENCE: dict[str, Any] = {
    "model.arch": "vit_small_patch16_224",  # --arch vit_small
    "model.patch_size": 16,
    "model.img_size": 224,
    "model.drop_path": 0.1,  # --drop_path_rate 0.1
    "model.num_concepts": 8192,  # --out_dim 8192 (patch concepts)
    "model.cls_num_concepts": 8192,
    "model.recon_hidden": 384,  # RECHead: in_dim -> in_dim
    "model.recon_bottleneck": 384,
    "gmml.ratio": [0.5, 0.5],  # --drop_perc 0.5: uniform in [min(0.5, p), p]
    "gmml.max_block_frac": 0.3,  # max_block_sz 0.3
    "gmml.choose_per": "image",  # GMML_replace_list: an image is dropped or replaced
    "gmml.drop_weight": 0.5,  # replaced with p = 1 / (1 + number of drop types) = 0.5
    "gmml.replace_weight": 0.5,
    "gmml.colour_weight": 0.0,  # no recolouring
    "gmml.replace_ratio": [0.3, 0.3],  # --drop_replace 0.3
    "gmml.drop_fill": "zeros",  # --drop_type zeros
    "loss.recon_type": "mse",
    "loss.recon_region": "corrupted",
    "loss.student_temp": 0.1,
    "loss.teacher_temp": 0.07,  # --teacher_temp 0.07
    "loss.warmup_teacher_temp": 0.04,
    "loss.warmup_teacher_temp_epochs": 30,
    "loss.center_momentum": 0.9,
    "loss.cls_term": True,
    "loss.combine": "sum",  # loss = recon + patch + cls
    "data.global_crops": 2,
    "data.local_crops": 10,  # --local_crops_number 10
    "data.local_size": 96,
    "data.global_scale": [0.25, 1.0],  # --global_crops_scale 0.25 1
    "data.local_scale": [0.05, 0.25],  # --local_crops_scale 0.05 0.25
    "data.global_blur": [1.0, 0.1],  # global_transfo1 GaussianBlur(1.0), 2: GaussianBlur(0.1)
    "data.global_solarize": [0.0, 0.2],  # global_transfo2 Solarization(0.2)
    "data.local_blur": 0.5,  # local_transfo GaussianBlur(p=0.5)
    "data.workers": 8,
    "optim.epochs": 800,
    "optim.batch_size": 64,
    "optim.base_lr": 0.0005,
    "optim.min_lr": 1e-6,
    "optim.warmup_epochs": 10,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.clip_grad": 3.0,
    "optim.clip_mode": "per_param",  # utils.clip_gradients: each parameter on its own
    "optim.freeze_last_layer_epochs": 1,
    "optim.freeze_last_layer_heads": ["cls"],  # cancel_gradients_last_layer: last_layer only
    "optim.momentum_teacher": 0.996,
    "run.precision": "auto",
    "run.log_every": 50,
    "run.save_every": 1000,
    "run.keep_every_epochs": 50,
    "run.preview_every": 1000,
}

# The paper's values as README.md and docs/METHOD_NOTES.md state them (section 4.1).
PAPER: dict[str, Any] = {
    "model.arch": "vit_small_patch16_224",
    "model.patch_size": 16,
    "model.img_size": 224,
    "model.num_concepts": 8192,
    "model.head_hidden": 2048,
    "model.head_bottleneck": 256,
    "model.recon_hidden": 2048,
    "model.recon_bottleneck": 256,
    "model.norm_last_layer": True,
    "gmml.ratio": [0.4, 0.8],
    "loss.recon_type": "l1",
    "loss.recon_region": "all",
    "loss.student_temp": 0.1,
    "loss.teacher_temp": 0.04,
    "loss.warmup_teacher_temp_epochs": 0,
    "loss.center_momentum": 0.9,
    "loss.combine": "average",
    "loss.cls_term": False,
    "data.global_crops": 2,
    "data.local_crops": 0,
    "optim.epochs": 500,
    "optim.batch_size": 64,
    "optim.base_lr": 0.0005,
    "optim.min_lr": 1e-6,
    "optim.warmup_epochs": 10,
    "optim.weight_decay": 0.04,
    "optim.weight_decay_end": 0.4,
    "optim.momentum_teacher": 0.996,
    "optim.momentum_teacher_end": 1.0,
    "optim.clip_grad": 3.0,
    "optim.freeze_last_layer_epochs": 1,
    "optim.freeze_last_layer_heads": ["patch", "cls"],
}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _resolved(recipe: str) -> dict[str, Any]:
    return flat(load_config(recipe, ["data.path=/data/images"]).to_dict())


def test_paper_recipe_resolves_as_before() -> None:
    before = flat(json.loads(SNAPSHOT.read_text()))
    now = _resolved("paper_vits16")
    undeclared = sorted(set(now) - set(before) - set(NEW_KEYS))
    assert undeclared == [], f"new config keys: declare them in NEW_KEYS: {undeclared}"
    assert sorted(set(before) - set(now)) == [], "config keys disappeared"
    assert {k: now[k] for k in before} == before
    assert {k: now[k] for k in NEW_KEYS if k in now} == {
        k: v for k, v in NEW_KEYS.items() if k in now
    }


def test_reference_recipe_pins_every_value() -> None:
    data = yaml.safe_load((CONFIG_DIR / "reference_vits16.yaml").read_text())
    assert sorted(flat(data)) == sorted(REFERENCE), "every value the recipe sets is pinned"
    now = _resolved("reference_vits16")
    assert {k: now[k] for k in REFERENCE} == REFERENCE


def test_paper_recipe_has_the_papers_values() -> None:
    now = _resolved("paper_vits16")
    assert {k: now[k] for k in PAPER} == PAPER


def test_a_recipe_says_only_how_it_differs_from_its_base(tmp_path: Path) -> None:
    """``base:`` merges section by section: a child's one key leaves its siblings as the base
    set them, through two levels (a path beside the file, then a name in mcssl/configs)."""
    (tmp_path / "parent.yaml").write_text("base: demo_cpu\noptim:\n  epochs: 7\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\noptim:\n  batch_size: 16\n")
    demo = flat(load_config("demo_cpu").to_dict())
    child = flat(load_config(str(tmp_path / "child.yaml")).to_dict())
    changed = {k: v for k, v in child.items() if v != demo[k]}
    assert changed == {"optim.epochs": 7, "optim.batch_size": 16, "recipe": "child"}


def test_bad_base_recipes_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"loop \(a -> b -> a\)"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("base: nonesuch\n")
    with pytest.raises(ConfigError, match="'nonesuch' not found"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("base: [demo_cpu]\n")
    with pytest.raises(ConfigError, match="base must be a recipe name or path"):
        load_config(str(tmp_path / "d.yaml"))
