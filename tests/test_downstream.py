"""Downstream evaluation: metrics, the asymmetric loss, dataset readers, fine-tuning."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mcssl.evaluation.datasets import read, read_coco, read_csv, read_voc
from mcssl.evaluation.knn import LabelledDataError
from mcssl.evaluation.multilabel import multilabel_metrics
from mcssl.losses.asl import AsymmetricLoss


def test_map_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.random((200, 7)) < 0.3
    scores = np.clip(targets * 0.3 + rng.random((200, 7)), 0, 1)
    got = multilabel_metrics(scores, targets)["mAP"]
    want = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(7)])
    assert got == pytest.approx(want, abs=1e-12)


def test_threshold_metrics_by_hand() -> None:
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    m = multilabel_metrics(scores, targets)
    # class 0: predicted {0, 1}, true {0, 2} -> P 1/2, R 1/2; class 1: predicted {1, 2} = true
    assert m["CP"] == pytest.approx((0.5 + 1) / 2) and m["CR"] == pytest.approx((0.5 + 1) / 2)
    assert m["OP"] == pytest.approx(3 / 4) and m["OR"] == pytest.approx(3 / 4)
    assert m["CF1"] == pytest.approx(0.75) and m["OF1"] == pytest.approx(0.75)


def test_asymmetric_loss_against_its_formula() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([[1.0, 0.0, 0.0]])
    p = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.5)]
    q = [max(v - 0.05, 0.0) for v in p]
    want = -(math.log(p[0]) + q[1] ** 4 * math.log(1 - q[1]) + q[2] ** 4 * math.log(1 - q[2]))
    assert float(AsymmetricLoss(0, 4, 0.05)(logits, y)) == pytest.approx(want, rel=1e-6)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum")
    assert float(AsymmetricLoss(0, 0, 0)(logits, y)) == pytest.approx(float(bce), rel=1e-6)


def _voc(root: Path, split: str, objects: dict[str, list[str]]) -> None:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects) + "\n")
    for i, names in objects.items():
        objs = "".join(f"<object><name>{n}</name><difficult>0</difficult></object>" for n in names)
        (root / "Annotations" / f"{i}.xml").write_text(f"<annotation>{objs}</annotation>")


def test_voc_reader_and_a_malformed_annotation(tmp_path: Path) -> None:
    _voc(tmp_path, "train", {"001": ["dog", "person", "dog"], "002": ["cat"]})
    _voc(tmp_path, "val", {"003": ["person"]})
    tr, va = read("voc", "train", "val", str(tmp_path))
    assert tr.classes == ["cat", "dog", "person"] and va.classes == tr.classes
    assert tr.targets.tolist() == [[0, 1, 1], [1, 0, 0]] and va.targets.tolist() == [[0, 0, 1]]
    assert tr.paths[0] == tmp_path / "JPEGImages" / "001.jpg"
    (tmp_path / "Annotations" / "002.xml").write_text("<annotation><object>")
    with pytest.raises(LabelledDataError, match="002.xml"):
        read_voc(tmp_path, "train")
    with pytest.raises(LabelledDataError, match="not found"):
        read_voc(tmp_path, "test")


def test_coco_reader_and_a_malformed_file(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
                   {"id": 3, "file_name": "empty.jpg"}],
        "annotations": [{"image_id": 1, "category_id": 5}, {"image_id": 1, "category_id": 9},
                        {"image_id": 2, "category_id": 9}],
        "categories": [{"id": 5, "name": "zebra"}, {"id": 9, "name": "car"}],
    }  # fmt: skip
    (tmp_path / "ann.json").write_text(json.dumps(data))
    got = read_coco(tmp_path / "ann.json", tmp_path / "img")
    assert got.classes == ["car", "zebra"] and got.targets.tolist() == [[1, 1], [1, 0]]
    assert got.paths == [tmp_path / "img" / "a.jpg", tmp_path / "img" / "b.jpg"]
    del data["categories"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LabelledDataError, match="not a COCO instances file"):
        read_coco(tmp_path / "bad.json", tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(LabelledDataError, match="not readable JSON"):
        read_coco(tmp_path / "broken.json", tmp_path)


def test_csv_reader_and_malformed_rows(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("image,labels\nx/1.png,a;b\n2.png,b\n")
    (tmp_path / "val.csv").write_text("3.png,a\n")
    tr, va = read("csv", str(tmp_path / "train.csv"), str(tmp_path / "val.csv"))
    assert tr.classes == ["a", "b"] and tr.targets.tolist() == [[1, 1], [0, 1]]
    assert tr.paths[0] == tmp_path / "x" / "1.png" and va.targets.tolist() == [[1, 0]]
    (tmp_path / "bad.csv").write_text("1.png\n")
    with pytest.raises(LabelledDataError, match="row 1"):
        read_csv(tmp_path / "bad.csv")
    (tmp_path / "unknown.csv").write_text("1.png,zzz\n")
    with pytest.raises(LabelledDataError, match="zzz"):
        read_csv(tmp_path / "unknown.csv", ["a", "b"])


def scene_csv(root: Path, n: int, seed: int) -> Path:
    """Generated scenes as PNGs + a CSV whose labels are the concept classes present."""
    from PIL import Image

    from mcssl.scenes import SceneSpec, make_scenes

    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for i, (img, mask) in enumerate(make_scenes(n, seed, SceneSpec(size=64))):
        Image.fromarray(img).save(root / f"{i}.png")
        present = sorted(int(c) for c in np.unique(mask) if c and (mask == c).sum() >= 64)
        rows.append(f"{i}.png," + ";".join(f"c{c}" for c in present))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.mark.slow
def test_finetuning_the_bundled_checkpoint_beats_chance(tmp_path: Path) -> None:
    """Multi-label scenes (labels = concept classes present), 4 epochs at 64 px. Measured:
    mAP 0.524 vs chance 0.402 (a random-init backbone with the same budget: 0.522, so this
    budget does not separate them; see the closing note of the downstream issue)."""
    from mcssl.cli import main

    tr, va = scene_csv(tmp_path / "train", 192, 0), scene_csv(tmp_path / "val", 96, 1)
    ckpt = os.environ.get("MCSSL_FT_CHECKPOINT", "default")  # another model to compare
    args = ["eval", "finetune", "--checkpoint", ckpt, "--format", "csv", "--train", str(tr),
            "--val", str(va), "--epochs", "4", "--batch-size", "32", "--img-size", "64",
            "--workers", "0", "--lr", "4e-3", "--out", str(tmp_path / "ft")]  # fmt: skip
    assert main(args) == 0
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    chance = read_csv(va).targets.mean()  # the mAP of random scores = the positive rate
    assert res["mAP"] > chance + 0.08
    assert res["task"] == "multilabel" and res["val_images"] == 96
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and (tmp_path / "ft" / "last.pt").exists()
