"""Labelled datasets from local paths for downstream evaluation.

Multi-class: an ImageFolder (``root/<class>/<image>``). Multi-label: PASCAL VOC 2007 XML
(``root/Annotations``, ``root/JPEGImages``, ``root/ImageSets/Main/<split>.txt``), COCO
instances JSON (``--images`` folder + ``instances_*.json``), or a CSV with ``image,labels``
rows (labels separated by ``;``). Every reader returns paths, targets and class names and
raises a one-line :class:`LabelledDataError` for malformed input.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcssl.evaluation.knn import ImageFolder, LabelledDataError


@dataclass
class Labelled:
    paths: list[Path]
    targets: np.ndarray  # (N,) int64 class ids (multi-class) or (N, C) {0, 1} (multi-label)
    classes: list[str]

    @property
    def multilabel(self) -> bool:
        return self.targets.ndim == 2


def _multi_hot(labels: list[list[str]], classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    classes = classes or sorted({c for row in labels for c in row})
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), np.float32)
    for i, row in enumerate(labels):
        for c in row:
            if c not in index:
                raise LabelledDataError(f"label {c!r} is not one of the training classes")
            y[i, index[c]] = 1
    return y, classes


def read_folder(root: str | Path) -> Labelled:
    f = ImageFolder.read(root)
    return Labelled(f.paths, f.labels, f.classes)


def read_voc(root: str | Path, split: str, classes: list[str] | None = None) -> Labelled:
    root = Path(root)
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    try:
        ids = [ln.split()[0] for ln in ids_file.read_text().splitlines() if ln.strip()]
    except OSError:
        raise LabelledDataError(f"{ids_file}: not found (expected a VOC 2007 layout)") from None
    paths, labels = [], []
    for i in ids:
        xml = root / "Annotations" / f"{i}.xml"
        try:
            tree = ET.parse(xml)
        except (OSError, ET.ParseError) as e:
            raise LabelledDataError(f"{xml}: unreadable annotation ({e})") from None
        names = [o.findtext("name") for o in tree.getroot().iter("object")]
        if not names or any(not n for n in names):
            raise LabelledDataError(f"{xml}: an <object> without a <name>")
        paths.append(root / "JPEGImages" / f"{i}.jpg")
        labels.append(sorted(set(names)))
    y, classes = _multi_hot(labels, classes)
    return Labelled(paths, y, classes)


def read_coco(annotations: str | Path, images: str | Path, classes: list[str] | None = None):
    try:
        data = json.loads(Path(annotations).read_text())
        cats = {c["id"]: c["name"] for c in data["categories"]}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        labels: dict[int, set[str]] = {i: set() for i in files}
        for a in data["annotations"]:
            labels[a["image_id"]].add(cats[a["category_id"]])
    except (OSError, ValueError) as e:
        raise LabelledDataError(f"{annotations}: not readable JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise LabelledDataError(f"{annotations}: not a COCO instances file (missing {e})") from None
    ids = sorted(i for i in files if labels[i])  # images without objects carry no label
    y, names = _multi_hot([sorted(labels[i]) for i in ids], classes or sorted(cats.values()))
    return Labelled([Path(images) / files[i] for i in ids], y, names)


def read_csv(path: str | Path, classes: list[str] | None = None) -> Labelled:
    """``image,labels`` rows; image paths relative to the CSV's folder; labels ``a;b;c``."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, csv.Error) as e:
        raise LabelledDataError(f"{path}: unreadable CSV ({e})") from None
    if rows and rows[0][:2] == ["image", "labels"]:
        rows = rows[1:]
    paths, labels = [], []
    for n, row in enumerate(rows, 1):
        if len(row) != 2 or not row[0].strip():
            raise LabelledDataError(f"{path}: row {n} is not 'image,labels'")
        paths.append(path.parent / row[0].strip())
        labels.append(sorted({x.strip() for x in row[1].split(";") if x.strip()}))
    if not paths:
        raise LabelledDataError(f"{path}: no rows")
    y, names = _multi_hot(labels, classes)
    return Labelled(paths, y, names)


def read(fmt: str, train: str, val: str, images: str | None = None) -> tuple[Labelled, Labelled]:
    """The train and val sets of one format; val uses the train classes."""
    if fmt == "folder":
        tr, va = read_folder(train), read_folder(val)
        if tr.classes != va.classes:
            raise LabelledDataError("train and val folders have different classes")
        return tr, va
    if fmt == "voc":  # train / val are split names inside one VOC root given as --images
        if not images:
            raise LabelledDataError("--format voc needs --images VOC_ROOT")
        tr = read_voc(images, train)
        return tr, read_voc(images, val, tr.classes)
    if fmt == "coco":
        if not images:
            raise LabelledDataError("--format coco needs --images IMAGE_FOLDER")
        tr = read_coco(train, images)
        return tr, read_coco(val, images, tr.classes)
    if fmt == "csv":
        tr = read_csv(train)
        return tr, read_csv(val, tr.classes)
    raise LabelledDataError(f"unknown format {fmt!r} (folder, voc, coco, csv)")
