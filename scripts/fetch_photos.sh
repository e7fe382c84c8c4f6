#!/usr/bin/env bash
# The 13 real photos from Debian's desktop-background packages that the study in
# docs/RESULTS.md ("Concepts across images") adds to the bundled photos for training:
# `apt-get download` (no root, nothing installed), unpack, keep the photos (not the abstract or
# drawn wallpapers), shorter side 512 px. Usage: scripts/fetch_photos.sh OUT_DIR
# Needs apt package lists (`apt-get update` once). Nothing at run time or in the tests needs them.
set -euo pipefail
out=${1:?usage: scripts/fetch_photos.sh OUT_DIR}
py=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download mate-backgrounds lomiri-wallpapers-20.04 >/dev/null)
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
mkdir -p "$out"
"$py" - "$tmp/x/usr/share/backgrounds" "$out" <<'PY'
import sys
from pathlib import Path

from PIL import Image

src, out = Path(sys.argv[1]), Path(sys.argv[2])
photos = [src / "Kleiber_by_Lukas_Baubkus.jpg", *sorted((src / "mate/nature").glob("*.jpg"))]
for p in photos:
    im = Image.open(p).convert("RGB")
    s = 512 / min(im.size)
    im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC).save(
        out / f"{p.stem}.jpg", quality=92
    )
print(f"{len(photos)} photos in {out}")
PY
