#!/usr/bin/env bash
# Everything a lent GPU machine should do for issue 13, in one call that fits a 15-minute lease
# with the machine's start: the GPU check (tests and benchmarks, CHECK_S seconds), then the
# default's recipe scaled up (benchmarks/gpu_scaleup.sh, TRAIN_S seconds of training) and scored
# beside the bundled default. The device tool returns at most 8 files from $OUT, so this packs
# the logs and JSON into one archive beside the scaled-up model:
#   OUT=/some/folder bash benchmarks/gpu_session.sh     (about 9 minutes on one H100)
# To score the photo regions of must show 5 too, run `scripts/fetch_photos.sh runs/regions
# --regions` and `... --regions-more` here first and carry runs/regions (git ignores it).
# $OUT gets gpu_results.tgz (check/ and scaleup/, without the resumable run state) and
# scaleup.safetensors (the scaled-up teacher, fp16).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_session}
WORK=${WORK:-/tmp/mcssl_gpu}
mkdir -p "$OUT" "$WORK"
OUT=$WORK/check BUDGET_S=${CHECK_S:-240} bash benchmarks/gpu_check.sh
OUT=$WORK/scaleup TRAIN_S=${TRAIN_S:-120} bash benchmarks/gpu_scaleup.sh
cp "$WORK/scaleup/scaleup.safetensors" "$OUT/" 2>/dev/null
tar czf "$OUT/gpu_results.tgz" -C "$WORK" --exclude=last.pt --exclude='*.safetensors' \
    --exclude=probe check scaleup
ls -l "$OUT"
