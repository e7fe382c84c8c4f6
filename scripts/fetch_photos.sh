#!/usr/bin/env bash
# Real photos from Debian's desktop-background packages for the study in docs/RESULTS.md
# ("Concepts across images"): `apt-get download` (no root, nothing installed), unpack, keep the
# photos (not the abstract or drawn wallpapers), shorter side 512 px.
#   scripts/fetch_photos.sh OUT_DIR             the 13 training photos (mate-backgrounds,
#                                               lomiri-wallpapers-20.04; round 25's data)
#   scripts/fetch_photos.sh OUT_DIR --held-out  the 6 held-out photos no run trains on
#                                               (lomiri-wallpapers-16.04; round 25's pictures)
# Needs apt package lists (`apt-get update` once). Nothing at run time or in the tests needs them.
set -euo pipefail
out=${1:?usage: scripts/fetch_photos.sh OUT_DIR [--held-out]}
set=${2:-train}
py=${PYTHON:-.venv/bin/python}
case $set in
  train) pkgs=(mate-backgrounds lomiri-wallpapers-20.04) ;;
  --held-out) pkgs=(lomiri-wallpapers-16.04) ;;
  *) echo "fetch_photos.sh: unknown option $set (expected --held-out)" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null)
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
mkdir -p "$out"
"$py" - "$tmp/x/usr/share/backgrounds" "$out" "$set" <<'PY'
import sys
from pathlib import Path

from PIL import Image

src, out, which = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if which == "train":
    photos = [src / "Kleiber_by_Lukas_Baubkus.jpg", *sorted((src / "mate/nature").glob("*.jpg"))]
    names = [p.stem for p in photos]
else:  # numbered in the order of the round-25 sheet
    stems = ["aitzgorri", "picosdeeuropa", "Dragonfly", "life", "friends", "Bridge"]
    photos = [next(src.glob(f"{s}_by_*.jpg")) for s in stems]
    names = [f"{i}_{s}" for i, s in enumerate(stems, 1)]
for p, name in zip(photos, names):
    im = Image.open(p).convert("RGB")
    s = 512 / min(im.size)
    im.resize((round(im.width * s), round(im.height * s)), Image.BICUBIC).save(
        out / f"{name}.jpg", quality=92
    )
print(f"{len(photos)} photos in {out}")
PY
