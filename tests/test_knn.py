"""kNN evaluation: the classifier on hand-made vectors, ImageFolder reading, `mcssl eval knn`,
and the online kNN monitor agreeing with the offline evaluation of the same teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcssl.cli import main
from mcssl.config import ConfigError, load_config
from mcssl.evaluation.knn import ImageFolder, LabelledDataError, knn_classify, topk_accuracy
from mcssl.evaluation.online import online_monitors
from mcssl.scenes import SceneSpec, make_scenes
from mcssl.train import train


def test_weighted_votes_by_hand() -> None:
    train_x = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
    train_y = np.array([0, 1, 1])
    test_x = np.array([[1, 0]], np.float32)
    votes = knn_classify(train_x, train_y, test_x, n_classes=2, k=2, temperature=0.5)
    # neighbours: #0 (sim 1.0, class 0) and #1 (sim 0.8, class 1)
    assert votes[0] == pytest.approx([np.exp(1 / 0.5), np.exp(0.8 / 0.5)], rel=1e-5)
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]])
    assert topk_accuracy(scores, np.array([1, 2]), 1) == 0.5
    assert topk_accuracy(scores, np.array([1, 2]), 2) == 1.0


def _folder(root: Path, n: int, seed: int) -> Path:
    """Single-object scenes, one sub-folder per object class."""
    for img, mask in make_scenes(n, seed, SceneSpec(size=64, max_objects=1, min_frac=0.5)):
        c = int(mask.max())
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"class{c}" / f"{len(list(root.rglob('*.png')))}.png")
    return root


def test_image_folder_reads_classes_and_refuses_bad_layouts(tmp_path: Path) -> None:
    data = ImageFolder.read(_folder(tmp_path / "ok", 12, 0))
    assert data.classes == sorted(p.name for p in (tmp_path / "ok").iterdir())
    assert len(data.paths) == 12 and set(data.labels) == set(range(len(data.classes)))
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    for bad in (tmp_path / "flat", tmp_path / "missing"):
        with pytest.raises(LabelledDataError):
            ImageFolder.read(bad)
    with pytest.raises(ConfigError, match="both"):
        load_config("smoke", [f"run.knn_train={tmp_path}"])


def test_online_knn_agrees_with_offline_knn(tmp_path: Path, capsys) -> None:
    tr, va = _folder(tmp_path / "train", 24, 1), _folder(tmp_path / "val", 24, 2)
    if sorted(p.name for p in tr.iterdir()) != sorted(p.name for p in va.iterdir()):
        pytest.fail("the seeds should give the same classes in both folders")
    run = tmp_path / "run"
    over = ["optim.epochs=1", f"run.knn_train={tr}", f"run.knn_val={va}", "run.monitor_every=9"]
    cfg = load_config("smoke", over)
    train(cfg, run, monitors=online_monitors(cfg))
    last = [json.loads(line) for line in (run / "metrics.jsonl").open()][-1]
    assert last["step"] == 9 and 0 <= last["knn_top1"] <= last["knn_top5"] <= 1
    out = tmp_path / "knn.json"
    res = 32  # the smoke model's img_size: what the monitor used
    code = main(["eval", "knn", "--checkpoint", str(run), "--train", str(tr), "--val", str(va),
                 "--resolution", str(res), "--out", str(out)])  # fmt: skip
    assert code == 0 and "kNN (k=20) top-1" in capsys.readouterr().out
    offline = json.loads(out.read_text())
    assert offline["knn_top1"] == pytest.approx(last["knn_top1"])
    assert offline["knn_top5"] == pytest.approx(last["knn_top5"])
    assert offline["test_images"] == 24
