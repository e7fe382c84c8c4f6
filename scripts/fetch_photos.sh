#!/usr/bin/env bash
# Real photos from Debian packages (desktop backgrounds; GCompris) for the study in docs/RESULTS.md
# ("Concepts across images"): `apt-get download` (no root, nothing installed), unpack, keep the
# photos (not the abstract or drawn wallpapers), shorter side 512 px.
#   scripts/fetch_photos.sh OUT_DIR             the 13 training photos (mate-backgrounds,
#                                               lomiri-wallpapers-20.04; round 25's data)
#   scripts/fetch_photos.sh OUT_DIR --held-out  the 6 held-out photos no run trains on
#                                               (lomiri-wallpapers-16.04; round 25's pictures)
#   scripts/fetch_photos.sh OUT_DIR --regions   13 held-out photos (those 6 and 7 of
#                                               plasma-workspace-wallpapers) as OUT_DIR/images
#                                               and OUT_DIR/masks: boxes of one kind of region
#                                               each from scripts/photo_regions.json, for
#                                               `mcssl eval concepts --data OUT_DIR` (round 31)
#   scripts/fetch_photos.sh OUT_DIR --regions-more  45 more held-out photos (gcompris-qt-data's
#                                               monuments and animals) with boxes from
#                                               scripts/photo_regions_gcompris.json, the same
#                                               way; into the same OUT_DIR as --regions, the
#                                               kinds keep their ids (round 33)
#   scripts/fetch_photos.sh OUT_DIR --train-more    the 51 other photos of those GCompris
#                                               activities and explore_world_animals, none of
#                                               them labelled: training data (round 34)
# Needs apt package lists (`apt-get update` once). Nothing at run time or in the tests needs them.
set -euo pipefail
out=${1:?usage: scripts/fetch_photos.sh OUT_DIR [--held-out | --regions | --regions-more | --train-more]}
set=${2:-train}
py=${PYTHON:-.venv/bin/python}
case $set in
  train) pkgs=(mate-backgrounds lomiri-wallpapers-20.04) ;;
  --held-out) pkgs=(lomiri-wallpapers-16.04) ;;
  --regions) pkgs=(lomiri-wallpapers-16.04 plasma-workspace-wallpapers) ;;
  --regions-more | --train-more) pkgs=(gcompris-qt-data) ;;
  *) echo "fetch_photos.sh: unknown option $set (expected --held-out, --regions, --regions-more or --train-more)" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null)
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
mkdir -p "$out"
spec=$(dirname "$0")/photo_regions.json
[[ $set == --regions-more || $set == --train-more ]] && spec=$(dirname "$0")/photo_regions_gcompris.json
"$py" - "$tmp/x/usr/share" "$out" "$set" "$spec" <<'PY'
import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

share, out, which, regions = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
src = share / "backgrounds"


def plasma(name: str) -> Path:  # the largest size of a Plasma wallpaper
    files = (share / "wallpapers" / name / "contents/images").glob("*.jpg")
    return max(files, key=lambda p: Image.open(p).width)


def rcc_files(path: Path) -> dict[str, bytes]:
    """A Qt resource file's files by name (format: Qt's rcc, versions 1-3; zlib entries only)."""
    b = path.read_bytes()
    _, version, tree, data, names = struct.unpack(">4sIIII", b[:20])
    node = 22 if version >= 2 else 14  # version 2 added an 8-byte modification time a node

    def name(off: int) -> str:
        (n,) = struct.unpack(">H", b[names + off : names + off + 2])
        return b[names + off + 6 : names + off + 6 + 2 * n].decode("utf-16-be")

    out, todo = {}, [0]
    while todo:
        p = tree + todo.pop() * node
        name_off, flags = struct.unpack(">IH", b[p : p + 6])
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", b[p + 6 : p + 14])
            todo += range(first, first + count)
            continue
        (off,) = struct.unpack(">I", b[p + 10 : p + 14])
        (size,) = struct.unpack(">I", b[data + off : data + off + 4])
        blob = b[data + off + 4 : data + off + 4 + size]
        out[name(name_off)] = zlib.decompress(blob[4:]) if flags & 1 else blob
    return out


def save(p: Path | bytes, dest: Path) -> Image.Image:
    im = Image.open(io.BytesIO(p) if isinstance(p, bytes) else p).convert("RGB")
    s = 512 / min(im.size)
    im = im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC)
    im.save(dest, quality=92)
    return im


rcc = {}  # GCompris' photos by file name (its Qt resource files)
activities = {"--regions-more": ["explore_monuments", "erase"],
              "--train-more": ["explore_monuments", "erase", "explore_world_animals"]}
for activity in activities.get(which, []):
    files = rcc_files(share / f"gcompris-qt/rcc/{activity}.rcc")
    rcc |= {Path(n).stem: v for n, v in files.items() if n.endswith(".webp")}
spec = json.loads(Path(regions).read_text())

if which == "train":
    photos = [src / "Kleiber_by_Lukas_Baubkus.jpg", *sorted((src / "mate/nature").glob("*.jpg"))]
    names = [p.stem for p in photos]
elif which == "--held-out":  # numbered in the order of the round-25 sheet
    stems = ["aitzgorri", "picosdeeuropa", "Dragonfly", "life", "friends", "Bridge"]
    photos = [next(src.glob(f"{s}_by_*.jpg")) for s in stems]
    names = [f"{i}_{s}" for i, s in enumerate(stems, 1)]
elif which == "--train-more":  # none of the labelled photos of --regions-more
    names = sorted(n for n in rcc if n not in spec["photos"])
    photos = [rcc[n] for n in names]
if not which.startswith("--regions"):
    for p, name in zip(photos, names):
        save(p, out / f"{name}.jpg")
    print(f"{len(photos)} photos in {out}")
    sys.exit()

ids = {kind: i for i, kind in enumerate(spec["kinds"])}
(out / "images").mkdir(exist_ok=True)
(out / "masks").mkdir(exist_ok=True)
for name, boxes in spec["photos"].items():
    found = list(src.glob(f"{name}_by_*.jpg"))
    photo = rcc[name] if rcc else found[0] if found else plasma(name)
    im = save(photo, out / "images" / f"{name}.jpg")
    mask = Image.new("L", im.size, 255)  # 255: not labelled
    draw, (w, h) = ImageDraw.Draw(mask), im.size
    for kind, x0, y0, x1, y1 in boxes:  # tenths of the width and height, x1 / y1 excluded
        draw.rectangle([x0 * w / 10, y0 * h / 10, x1 * w / 10 - 1, y1 * h / 10 - 1], ids[kind])
    mask.save(out / "masks" / f"{name}.png")
    print(name, {int(v): int(n) for v, n in zip(*np.unique(np.asarray(mask), return_counts=True))})
print(f"{len(spec['photos'])} photos with region masks in {out}")
PY
