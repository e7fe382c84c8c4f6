#!/usr/bin/env bash
# Issue 13, item 6: the bundled default's recipe (bundled_cpu) scaled up on one GPU and sized to
# a wall-clock budget, then scored by the concept benchmark beside the bundled default, in the
# same run (benchmarks/gpu_session.sh runs it after benchmarks/gpu_check.sh in one call):
#   OUT=/some/folder TRAIN_S=240 bash benchmarks/gpu_scaleup.sh
# Scale: BATCH images a step (default 256, 4x the CPU recipe's 64: more distinct images a step,
# which the CPU study could not afford), SCENES generated scenes (default 8000) with the bundled
# photos at the CPU recipe's share (9 x 40 items per 2000 scenes), PRECISION (default auto: bf16
# on a GPU). A 30-step probe measures images/s; the run gets as many epochs as fit in TRAIN_S at
# that rate, so its schedule (warm-up, cosine, teacher momentum) completes. A `timeout` twice as
# long is only a safety net: SIGTERM makes training save a resumable checkpoint. Writes into
# $OUT: python.log, probe.log, probe/, train.log, run/ (the run folder), scaleup.safetensors
# (fp16 export), concepts_scaleup.json (with the baselines), concepts_default.json, and where
# REGIONS (default runs/regions) holds the photo-region set, concepts_regions_*.json and
# regions_paired_scaleup.txt; summary.txt. DEVICE=cpu with a small TRAIN_S / BATCH / SCENES
# (EVAL_DATA=synthetic:10) checks the script itself on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_scaleup}
TRAIN_S=${TRAIN_S:-240}
BATCH=${BATCH:-256}
SCENES=${SCENES:-8000}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
source benchmarks/device_python.sh >"$OUT/python.log" 2>&1
tail -n 1 "$OUT/python.log" | tee "$SUMMARY"
WORKERS=${WORKERS:-$(($(nproc) > 16 ? 14 : $(nproc) - 2))}
if ((WORKERS < 1)); then WORKERS=1; fi
REPEAT=$((SCENES * 40 / 2000)) # the photos' repeats: their share of the CPU recipe's data
ITEMS=$((9 * REPEAT + SCENES))
SCALE=(run.device="$DEVICE" run.precision="${PRECISION:-auto}" optim.batch_size="$BATCH"
    data.workers="$WORKERS" run.log_every=10)

# 1. the probe: about 30 steps of the same model, batch and kinds of data (few scenes, repeated:
# each item is cropped afresh, so the work a step is the same and generating them is quick)
timeout -k 10 300 $PY -m mcssl train --config bundled_cpu --out "$OUT/probe" "${SCALE[@]}" \
    optim.epochs=1 optim.warmup_epochs=0 optim.freeze_last_layer_epochs=0 \
    data.path="samples*$((30 * BATCH / 50))+synthetic:$((2 * BATCH))*15" >"$OUT/probe.log" 2>&1
# the last logged rate, after the workers have started and the first steps are paid
LAST='import json, sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["images_per_s"])'
IPS=$($PY -c "$LAST" "$OUT/probe/metrics.jsonl")
EPOCHS=$($PY -c "print(max(1, int($TRAIN_S * $IPS / $ITEMS)))")
echo "probe: $IPS images/s at batch $BATCH on $DEVICE; $ITEMS items an epoch -> $EPOCHS epochs" \
    | tee -a "$SUMMARY"

# 2. the scaled-up run
t0=$(date +%s)
rc=0
timeout -k 30 $((2 * TRAIN_S + 120)) $PY -m mcssl train --config bundled_cpu --out "$OUT/run" \
    "${SCALE[@]}" optim.epochs="$EPOCHS" data.path="samples*$REPEAT+synthetic:$SCENES" \
    >"$OUT/train.log" 2>&1 || rc=$?
echo "train: rc=$rc, $(($(date +%s) - t0)) s wall; $(tail -n 1 "$OUT/train.log")" \
    | tee -a "$SUMMARY"
$PY -m mcssl export "$OUT/run" --out "$OUT/scaleup.safetensors" --dtype fp16 >>"$SUMMARY" 2>&1

# 3. the benchmark at the bundled default's stored read-out (96 px, block -1, keys+concepts)
EVAL=(--data "${EVAL_DATA:-synthetic:200}" --seeds 0 1 2 --modes fixed varied --resolution 96
    --layer -1 --facet keys+concepts --device "$DEVICE")
t0=$(date +%s)
$PY -m mcssl eval concepts --checkpoint "$OUT/run" "${EVAL[@]}" \
    --out "$OUT/concepts_scaleup.json" >"$OUT/eval_scaleup.log" 2>&1
$PY -m mcssl eval concepts --checkpoint default "${EVAL[@]}" --no-baselines \
    --out "$OUT/concepts_default.json" >"$OUT/eval_default.log" 2>&1
# the real-photo regions of must show 5, where they were carried along (they are fetched with
# apt, which the device cannot reach: scripts/fetch_photos.sh runs/regions --regions and
# --regions-more here, then the device call carries runs/regions)
REGIONS=${REGIONS:-runs/regions}
if [[ -d $REGIONS/images ]]; then
    PHOTO=(--data "$REGIONS" --seeds 0 1 2 --resolution 96 --layer -1 --facet keys+concepts
        --device "$DEVICE")
    $PY -m mcssl eval concepts --checkpoint "$OUT/run" "${PHOTO[@]}" \
        --out "$OUT/concepts_regions_scaleup.json" >"$OUT/eval_regions.log" 2>&1
    $PY -m mcssl eval concepts --checkpoint default "${PHOTO[@]}" --no-baselines \
        --out "$OUT/concepts_regions_default.json" >>"$OUT/eval_regions.log" 2>&1
    # is its gap to each baseline more than which photos were drawn? (RESULTS round 32)
    if $PY docs/results/region_paired.py 96 -1 keys+concepts "$REGIONS" "$OUT/run" \
        200 >"$OUT/regions_paired_scaleup.txt" 2>&1; then
        tail -6 "$OUT/regions_paired_scaleup.txt" >>"$SUMMARY"
    fi
fi
echo "eval: $(($(date +%s) - t0)) s wall" | tee -a "$SUMMARY"
$PY - "$OUT" <<'EOF' | tee -a "$SUMMARY"
import json
import sys
from pathlib import Path

# the checkpoint under its run's name, then the baselines; scenes, then photo regions if scored
for run in ("scaleup", "default", "regions_scaleup", "regions_default"):
    if not Path(f"{sys.argv[1]}/concepts_{run}.json").exists():
        continue
    d = json.load(open(f"{sys.argv[1]}/concepts_{run}.json"))
    for mode, v in d["by_mode"].items():
        for name, m in v["methods"].items():
            print(f"{mode:6} {run if name == 'checkpoint' else name:14} ARI {m['ari']:.3f} "
                  f"mIoU {m['miou']:.3f} NMI co-cl. {m['nmi']:.3f} share {m['image_share']:.3f}")
EOF
