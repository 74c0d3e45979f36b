#!/usr/bin/env bash
# The whole MGD chain on CPU, on the synthetic set, with no download (`make demo`):
#   data -> random-init torchvision R18/R50 converted by the pin's converter -> base R50 teacher
#   -> base R18 student -> merge -> MGD-AMP distillation -> convert-all -> evaluate all three
#   -> results table + plots.
# Every step runs the same make target a COCO user runs, with the demo configs and folders.
# A step whose output already exists is kept (delete DEMO_DIR, or `make demo-clean`, to redo all).
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-output/demo}
PYTHON=${PYTHON:-python}
MAKE_CMD=${MAKE:-make}
# Overrides for a shortened chain (the tests use them): extra config options for every training
# step, and extra arguments for the data generator.
DEMO_OPTS=${DEMO_OPTS:-}
DEMO_DATA_ARGS=${DEMO_DATA_ARGS:-}
CONFIGS=${D2_CONFIGS:-detectron2/configs/COCO-Detection}
# the synthetic set, registered as any COCO-format set is (train_net.py --dataset, make DATASETS=)
DATA=$DEMO_DIR/data
DATASETS="mgd_synth_train $DATA/annotations/instances_train.json $DATA/train"
DATASETS+=" mgd_synth_val $DATA/annotations/instances_val.json $DATA/val"
make_step() { "$MAKE_CMD" --no-print-directory "$@" PYTHON="$PYTHON" WEIGHTS_DIR="$DEMO_DIR/weights" DATASETS="$DATASETS"; }

timings=()
demo_start=$(date +%s)
step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists, and time it
    local name=$1 output=$2 start
    shift 2
    if [ -n "$output" ] && [ -e "$output" ]; then
        echo "=== $name: $output exists, kept"
        timings+=("$(printf '%-22s %8s' "$name" kept)")
        return
    fi
    echo "=== $name"
    start=$(date +%s)
    "$@"
    timings+=("$(printf '%-22s %7ss' "$name" $(( $(date +%s) - start )))")
}

mkdir -p "$DEMO_DIR"
step "synthetic data" "$DEMO_DIR/data/synthetic.json" \
    "$PYTHON" scripts/make_synthetic_coco.py --out "$DEMO_DIR/data" --seed 0 --size 96 \
    --min-object 8 --max-object 42 $DEMO_DATA_ARGS
step "weights (random init)" "$DEMO_DIR/weights/r-50.pkl" make_step weights RANDOM_INIT=1
step "teacher R50" "$DEMO_DIR/base-R50/model_final.pth" make_step base DEPTH=50 \
    BASE_CONFIG="$CONFIGS/demo_retinanet_R_50.yaml" OUTPUT_DIR="$DEMO_DIR" OPTS="$DEMO_OPTS"
step "student R18" "$DEMO_DIR/base-R18/model_final.pth" make_step base DEPTH=18 \
    BASE_CONFIG="$CONFIGS/demo_retinanet_R_18.yaml" OUTPUT_DIR="$DEMO_DIR" OPTS="$DEMO_OPTS"
step "merge" "" make_step merge TEACHER="$DEMO_DIR/base-R50/model_final.pth" \
    STUDENT="$DEMO_DIR/weights/r-18.pkl" MERGED="$DEMO_DIR/weights/T50-S18.pkl"
# From random init the original's loss factors put the positions' losses orders of magnitude
# apart; the probe rescales each to ~0.02 after its factor and the batch size (the original's rule).
# shellcheck disable=SC2046  # word splitting intended: --dataset NAME JSON IMAGE_ROOT triples
step "loss-factor probe" "$DEMO_DIR/loss_factors.txt" "$PYTHON" train_net.py --probe-loss-factors \
    $(printf -- '--dataset %s %s %s ' $DATASETS) \
    --probe-matching-batches 10 --probe-output "$DEMO_DIR/loss_factors.txt" \
    --config-file "$CONFIGS/demo_mgd_R50_R18.yaml" MODEL.WEIGHTS "$DEMO_DIR/weights/T50-S18.pkl" \
    OUTPUT_DIR "$DEMO_DIR/probe" $DEMO_OPTS
step "MGD distillation" "$DEMO_DIR/mgd/model_final.pth" make_step distill \
    MGD_CONFIG="$CONFIGS/demo_mgd_R50_R18.yaml" MERGED="$DEMO_DIR/weights/T50-S18.pkl" \
    MGD_OUTPUT="$DEMO_DIR/mgd" OPTS="$(cat "$DEMO_DIR/loss_factors.txt") $DEMO_OPTS"
step "convert-all" "" make_step convert-all MGD_OUTPUT="$DEMO_DIR/mgd"

eval_step() {  # eval_step NAME CONFIG WEIGHTS OUTPUT [EVAL_TEACHER]
    step "eval $1" "$4/eval_results.json" make_step eval EVAL_CONFIG="$2" EVAL_WEIGHTS="$3" \
        EVAL_OUTPUT="$4" EVAL_TEACHER="${5:-}"
}
eval_step teacher "$CONFIGS/demo_mgd_R50_R18.yaml" "$DEMO_DIR/mgd/model_final.pth" "$DEMO_DIR/eval/teacher" 1
eval_step student "$CONFIGS/demo_retinanet_R_18.yaml" "$DEMO_DIR/base-R18/model_final.pth" "$DEMO_DIR/eval/student"
eval_step "MGD student" "$CONFIGS/demo_mgd_R50_R18.yaml" "$DEMO_DIR/mgd/model_final.pkl" "$DEMO_DIR/eval/mgd"

rm -f "$DEMO_DIR/results.json"
"$PYTHON" scripts/summarize_results.py "$DEMO_DIR/results.json" \
    --collect teacher="$DEMO_DIR/eval/teacher/eval_results.json" \
    --collect student="$DEMO_DIR/eval/student/eval_results.json" \
    --collect mgd="$DEMO_DIR/eval/mgd/eval_results.json" > "$DEMO_DIR/results.txt"
"$PYTHON" scripts/plot_runs.py --runs teacher="$DEMO_DIR/base-R50" student="$DEMO_DIR/base-R18" \
    mgd="$DEMO_DIR/mgd" --ap-table "$DEMO_DIR/results.json" --out "$DEMO_DIR/plots" > /dev/null

echo
echo "Step times (2-core CPU here; 'kept' = output already there):"
printf '  %s\n' "${timings[@]}"
printf '  %-22s %7ss\n' total $(( $(date +%s) - demo_start ))
echo
echo "COCO box AP on the synthetic val split ($DEMO_DIR/results.json):"
cat "$DEMO_DIR/results.txt"
echo "Plots: $(ls "$DEMO_DIR"/plots/*.png | tr '\n' ' ')"
