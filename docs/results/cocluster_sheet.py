"""The picture sheet of each round in docs/RESULTS.md (docs/img/roundNN_cocluster_k4.jpg).

Writes the eight inputs (scenes 0-2 of seed 0 in the `fixed` mode, the astronaut and coffee
photos, scenes 0-2 of seed 0 in the `varied` mode) to WORK/in, co-clusters them with each
checkpoint (`mcssl concepts --cocluster --k 4`, 128 px, block -6, keys+concepts: the read-out
of the rounds 5-23 defaults) into WORK/NAME, and pastes the k = 4 overlays as 160 px thumbnails:
a row of inputs, then one row per NAME (WORK defaults to runs/pics, which git ignores). A run
given as NAME=CHECKPOINT@LAYER/FACET[/PX] is read at that block, facet and resolution. For the six
scenes it also prints, per ground-truth class (0 = background), the cluster most of its pixels
fall in and that share, so what the pictures are said to show can be checked. With --images
it co-clusters those files instead (photos), and with --masks prints the same for their
labelled regions (the masks of `scripts/fetch_photos.sh DIR --regions`, round 31).

    python docs/results/cocluster_sheet.py OUT.jpg NAME=CHECKPOINT[@LAYER/FACET[/PX]]...
        [--work DIR] [--images FILE... [--masks DIR]]
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mcssl.images import sample_photos
from mcssl.scenes import make_scenes, spec_for

SIDE, PAD, LABEL = 160, 10, 90
READOUT = "-6/keys+concepts/128"  # block, facet and resolution of the rounds 5-23 defaults
NAMES = ["fixed0", "fixed1", "fixed2", "astronaut", "coffee", "varied0", "varied1", "varied2"]
SCENES = {i: name for i, name in enumerate(NAMES) if name.startswith(("fixed", "varied"))}


def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """The six scenes of the sheet: (image (H, W, 3) uint8, classes (H, W))."""
    return make_scenes(3, seed=0, spec=spec_for("fixed")) + make_scenes(
        3, seed=0, spec=spec_for("varied")
    )


def write_inputs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(img) for img, _ in scenes()]
    images[3:3] = [sample_photos()[name] for name in ("astronaut", "coffee")]
    paths = [folder / f"{i}_{n}.png" for i, n in enumerate(NAMES, 1)]
    for img, path in zip(images, paths, strict=True):
        img.convert("RGB").save(path)
    return paths


def regions(folder: Path, truths: dict[int, tuple[str, np.ndarray]]) -> list[str]:
    """One line per labelled input {index: (name, classes (H, W))}: class:cluster(share of the
    class's pixels in that cluster); class 255 (not labelled) is skipped."""
    masks = sorted(folder.glob("*_k4_mask.png"))
    lines = []
    for i, (name, truth) in truths.items():
        mask = Image.open(masks[i]).convert("L").resize(truth.shape[::-1], Image.NEAREST)
        ids = np.asarray(mask)
        cells = []
        for c in np.unique(truth[truth != 255]):
            found, counts = np.unique(ids[truth == c], return_counts=True)
            cells.append(f"{c}:{found[counts.argmax()]}({counts.max() / counts.sum():.2f})")
        lines.append(f"{name:14s} " + " ".join(cells))
    return lines


def photo_truths(images: list[Path], masks: Path | None) -> dict[int, tuple[str, np.ndarray]]:
    """The region masks (MASKS/STEM.png, as `scripts/fetch_photos.sh DIR --regions` writes
    them) of those inputs that have one."""
    if masks is None:
        return {}
    return {
        i: (p.stem, np.asarray(Image.open(masks / f"{p.stem}.png")))
        for i, p in enumerate(images)
        if (masks / f"{p.stem}.png").exists()
    }


def sheet(rows: list[tuple[str, list[Path]]], out: Path) -> None:
    width = LABEL + max(len(files) for _, files in rows) * (SIDE + PAD)
    canvas = Image.new("RGB", (width, len(rows) * (SIDE + PAD)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (name, files) in enumerate(rows):
        y = r * (SIDE + PAD)
        draw.text((5, y + SIDE // 2), name, fill="black")
        for c, path in enumerate(files):
            im = Image.open(path).convert("RGB")
            im.thumbnail((SIDE, SIDE))
            canvas.paste(im, (LABEL + c * (SIDE + PAD), y))
    canvas.save(out, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument(
        "runs",
        nargs="+",
        help="NAME=CHECKPOINT[@LAYER/FACET[/PX]] (a run folder or an exported file)",
    )
    ap.add_argument("--work", type=Path, default=Path("runs/pics"))
    ap.add_argument("--images", type=Path, nargs="+", help="these images instead of the scenes")
    ap.add_argument("--masks", type=Path, help="region masks of the --images (MASKS/STEM.png)")
    args = ap.parse_args()
    inputs = args.images or write_inputs(args.work / "in")
    truths = (
        photo_truths(inputs, args.masks)
        if args.images
        else {
            i: (name, truth) for (i, name), (_, truth) in zip(SCENES.items(), scenes(), strict=True)
        }
    )
    rows = [("input", inputs)]
    for run in args.runs:
        name, _, ckpt = run.partition("=")
        ckpt, _, at = ckpt.partition("@")
        layer, facet, px = ((at or READOUT).split("/") + ["128"])[:3]
        folder = args.work / name
        cmd = [sys.executable, "-m", "mcssl", "concepts", "--checkpoint", ckpt, "--resolution"]
        cmd += [px, "--layer", layer, "--facet", facet]
        cmd += ["--cocluster", "--k", "4", "--out", str(folder), *map(str, inputs)]
        subprocess.run(cmd, check=True)
        rows.append((name, sorted(folder.glob("*_k4.png"))))
        if truths:
            print(f"{name}: majority cluster per class", *regions(folder, truths), sep="\n  ")
    sheet(rows, args.out)


if __name__ == "__main__":
    main()
