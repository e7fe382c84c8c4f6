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


@pytest.fixture(scope="module")
def scene_finetunes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Multi-label scenes (labels = concept classes present), 4 epochs at 64 px, fine-tuned
    from the bundled checkpoint and from an untrained backbone -> results and chance mAP."""
    from mcssl.cli import main

    tmp = tmp_path_factory.mktemp("scenes")
    tr, va = scene_csv(tmp / "train", 192, 0), scene_csv(tmp / "val", 96, 1)
    ckpt = os.environ.get("MCSSL_FT_CHECKPOINT", "default")  # another model to compare
    out: dict[str, dict] = {}
    for name, extra in (("pretrained", []), ("random", ["--random-init"])):
        args = ["eval", "finetune", "--checkpoint", ckpt, "--format", "csv", "--train", str(tr),
                "--val", str(va), "--epochs", "4", "--batch-size", "32", "--img-size", "64",
                "--workers", "0", "--lr", "4e-3", "--out", str(tmp / name), *extra]  # fmt: skip
        assert main(args) == 0
        out[name] = json.loads((tmp / name / "results.json").read_text())
        rows = [json.loads(line) for line in (tmp / name / "metrics.jsonl").open()]
        out[name]["epochs_logged"] = [r["epoch"] for r in rows]
    out["chance"] = {"mAP": float(read_csv(va).targets.mean())}  # mAP of random scores
    print({k: v["mAP"] for k, v in out.items()})
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two fine-tunes: ~5 min each on a busy 2-core CPU
def test_finetuning_on_few_scenes_starts_better_from_the_bundled_checkpoint(
    scene_finetunes,
) -> None:
    """Would fail if pre-training did nothing useful for this task. Measured (2026-12-05,
    2-core CPU) with the bundled default (1440 steps, docs/RESULTS.md round 28): 0.731 vs random
    init 0.501 (chance 0.402); the defaults before it 0.694 (round 24) and 0.587 (round 6), the
    180-step model of the first release 0.529. On 640 / 200 scenes (lr 1e-3, seeds 0 and 1)
    0.784 / 0.772 vs 0.593 / 0.561."""
    pre, rnd, chance = (scene_finetunes[k]["mAP"] for k in ("pretrained", "random", "chance"))
    assert rnd > chance + 0.06  # the protocol itself learns
    assert pre > rnd + 0.12  # measured +0.23; the round-6 default's +0.086 would fail
    res = scene_finetunes["pretrained"]
    assert res["task"] == "multilabel" and res["val_images"] == 96
    assert res["epochs_logged"] == [1, 2, 3, 4]


def photo_folder(root: Path, per_class: int, seed: int) -> Path:
    """A small multi-class ImageFolder: random 48 px crops of three bundled photos."""
    from mcssl.images import sample_photos

    rng = np.random.default_rng(seed)
    for name, img in list(sample_photos().items())[:3]:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            x, y = rng.integers(0, img.width - 96), rng.integers(0, img.height - 96)
            img.crop((x, y, x + 96, y + 96)).resize((48, 48)).save(root / name / f"{i}.png")
    return root


def _ft_args(tmp_path: Path, out: str, *extra: str) -> list[str]:
    tr, va = tmp_path / "train", tmp_path / "val"
    if not tr.exists():
        photo_folder(tr, 16, 0), photo_folder(va, 4, 1)
    return ["eval", "finetune", "--checkpoint", "default", "--train", str(tr), "--val", str(va),
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--lr", "1e-3",
            "--out", str(tmp_path / out), *extra]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_mixup_cutmix_make_soft_targets_and_the_recipe_runs(tmp_path: Path) -> None:
    from mcssl.cli import main
    from mcssl.evaluation.finetune import FinetuneConfig, batch_mixer

    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 3
    mx, soft = batch_mixer(FinetuneConfig(mixup=0.8), 3)(x, y)
    assert soft.shape == (8, 3) and torch.allclose(soft.sum(1), torch.ones(8))
    lam = soft[torch.arange(8), y]  # mixup: image = lam * own + (1 - lam) * a rolled partner
    assert torch.allclose(mx, lam[0] * x + (1 - lam[0]) * x.roll(1, 0), atol=1e-6)
    assert batch_mixer(FinetuneConfig(), 3) is None
    args = _ft_args(tmp_path, "deit", "--epochs", "2", "--mixup", "0.8", "--cutmix", "1.0",
                    "--autoaugment", "--label-smoothing", "0.1")  # fmt: skip
    assert main(args) == 0
    res = json.loads((tmp_path / "deit" / "results.json").read_text())
    assert res["task"] == "multiclass" and res["config"]["mixup"] == 0.8
    assert 0 <= res["top1"] <= res["top5"] == 1.0  # three classes: top-5 is always right
    assert [r["steps"] for r in _rows(tmp_path / "deit")] == [6, 6]  # 48 images / batch 8


def test_mixup_on_multilabel_data_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from mcssl.cli import main

    tr = scene_csv(tmp_path / "s", 8, 0)
    args = ["eval", "finetune", "--format", "csv", "--train", str(tr), "--val", str(tr),
            "--mixup", "0.8", "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 1
    assert "mixup / cutmix are for multi-class data" in capsys.readouterr().err


def test_finetune_killed_then_resumed_ends_identical(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ref = _ft_args(tmp_path, "ref", "--epochs", "5")
    subprocess.run([sys.executable, "-m", "mcssl", *ref], env=env, check=True, timeout=300)
    cut = _ft_args(tmp_path, "cut", "--epochs", "5")
    proc = subprocess.Popen([sys.executable, "-m", "mcssl", *cut], env=env)
    deadline = time.time() + 240
    while not (tmp_path / "cut" / "last.pt").exists():  # written (atomically) after epoch 1
        assert proc.poll() is None and time.time() < deadline, "no epoch saved before the end"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at < 5
    subprocess.run([sys.executable, "-m", "mcssl", *cut, "--resume"], env=env, check=True,
                   timeout=300)  # fmt: skip
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in _rows(tmp_path / "cut")][-1] == 5


def test_finetune_ddp_two_ranks_stay_in_sync(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
           "mcssl", *_ft_args(tmp_path, "ddp", "--epochs", "2")]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert out["world_size"] == 2 and out["ranks_in_sync"] is True
    assert [r["steps"] for r in _rows(tmp_path / "ddp")] == [3, 3]  # 48 images / 2 ranks / 8
