#!/usr/bin/env bash
# The whole MGD chain on CPU, on the synthetic set, with no download (`make demo`):
#   data -> random-init torchvision R18/R50 converted by the pin's converter -> base R50 teacher
#   -> merge -> loss-factor probe -> for each seed 1..SEEDS: base R18 student, MGD-AMP
#   distillation, convert-all, evaluation of both, matched cost of both to the teacher
#   -> teacher evaluation -> results table (mean and spread over the seeds) + plots.
# Every step runs the same make target a COCO user runs, with the demo configs and folders.
# The teacher, the merge and the probe are shared by the seeds; seed s lives in DEMO_DIR/seed<s>.
# A step whose output already exists is kept (delete DEMO_DIR, or `make demo-clean`, to redo all).
# DETECTOR=retinanet (default) or faster_rcnn picks the detector: the same chain with the
# configs demo_<detector>_R_{50,18}.yaml and the MGD config of that detector.
set -euo pipefail
DEMO_DIR=${DEMO_DIR:-output/demo}
PYTHON=${PYTHON:-python}
MAKE_CMD=${MAKE:-make}
# Overrides for a shortened chain (the tests use them): extra config options for every training
# step, and extra arguments for the data generator.
DEMO_OPTS=${DEMO_OPTS:-}
DEMO_DATA_ARGS=${DEMO_DATA_ARGS:-}
DEMO_EVAL_OPTS=${DEMO_EVAL_OPTS:-}   # extra config options for the evaluations
SEEDS=${SEEDS:-1}                    # the students are trained with SEED 1..SEEDS
[[ $SEEDS =~ ^[1-9][0-9]*$ ]] || { echo "error: SEEDS must be a whole number >= 1, got '$SEEDS'" >&2; exit 2; }
CONFIGS=${D2_CONFIGS:-detectron2/configs/COCO-Detection}
DETECTOR=${DETECTOR:-retinanet}
case $DETECTOR in
    retinanet) MGD_DEMO_CONFIG=$CONFIGS/demo_mgd_R50_R18.yaml ;;
    faster_rcnn) MGD_DEMO_CONFIG=$CONFIGS/demo_mgd_faster_rcnn_R50_R18.yaml ;;
    *) echo "error: DETECTOR must be retinanet or faster_rcnn, got '$DETECTOR'" >&2; exit 2 ;;
esac
TAG=${DETECTOR#retinanet}; TAG=${TAG:+-$TAG}   # make's folder names: base-R50, base-faster_rcnn-R50
TEACHER_CONFIG=$CONFIGS/demo_${DETECTOR}_R_50.yaml
STUDENT_CONFIG=$CONFIGS/demo_${DETECTOR}_R_18.yaml
# the synthetic set, registered as any COCO-format set is (train_net.py --dataset, make DATASETS=)
DATA=$DEMO_DIR/data
DATASETS="mgd_synth_train $DATA/annotations/instances_train.json $DATA/train"
DATASETS+=" mgd_synth_val $DATA/annotations/instances_val.json $DATA/val"
make_step() { "$MAKE_CMD" --no-print-directory "$@" PYTHON="$PYTHON" WEIGHTS_DIR="$DEMO_DIR/weights" DATASETS="$DATASETS" \
    DETECTOR="$DETECTOR"; }
# The training steps skip Detectron2's evaluation at their end: the eval steps below evaluate
# the same weights on the same split (and write the tables' eval_results.json).
NO_FINAL_EVAL="DATASETS.TEST '()'"
# A training step stopped by Ctrl-C saved its last iteration: `make demo` again resumes it (the
# training steps run with RESUME=1), and that is the command train_net.py names.
export MGD_RESUME_COMMAND="$MAKE_CMD demo${DEMO_DIR:+ DEMO_DIR=$DEMO_DIR} SEEDS=$SEEDS DETECTOR=$DETECTOR"

timings=()
demo_start=$(date +%s)
step() {  # step NAME OUTPUT COMMAND...: run COMMAND unless OUTPUT exists, and time it
    local name=$1 output=$2 start
    shift 2
    if [ -n "$output" ] && [ -e "$output" ]; then
        echo "=== $name: $output exists, kept"
        timings+=("$(printf '%-28s %8s' "$name" kept)")
        return
    fi
    echo "=== $name"
    start=$(date +%s)
    "$@"
    timings+=("$(printf '%-28s %7ss' "$name" $(( $(date +%s) - start )))")
}

mkdir -p "$DEMO_DIR"
step "synthetic data" "$DEMO_DIR/data/synthetic.json" \
    "$PYTHON" scripts/make_synthetic_coco.py --out "$DEMO_DIR/data" --seed 0 --size 96 \
    --min-object 8 --max-object 42 $DEMO_DATA_ARGS
step "weights (random init)" "$DEMO_DIR/weights/r-50.pkl" make_step weights RANDOM_INIT=1
step "teacher R50" "$DEMO_DIR/base$TAG-R50/model_final.pth" make_step base DEPTH=50 RESUME=1 \
    BASE_CONFIG="$TEACHER_CONFIG" OUTPUT_DIR="$DEMO_DIR" OPTS="$NO_FINAL_EVAL $DEMO_OPTS"
step "merge" "" make_step merge TEACHER="$DEMO_DIR/base$TAG-R50/model_final.pth" \
    STUDENT="$DEMO_DIR/weights/r-18.pkl" MERGED="$DEMO_DIR/weights/T50-S18.pkl"
# From random init the original's loss factors put the positions' losses orders of magnitude
# apart; the probe rescales each to ~0.02 after its factor and the distillation divisor (the
# original's rule).
step "loss-factor probe" "$DEMO_DIR/loss_factors.txt" make_step probe PROBE_ARGS="--probe-matching-batches 10" \
    PROBE_FACTORS="$DEMO_DIR/loss_factors.txt" PROBE_OUTPUT="$DEMO_DIR/probe" \
    MGD_CONFIG="$MGD_DEMO_CONFIG" MERGED="$DEMO_DIR/weights/T50-S18.pkl" OPTS="$DEMO_OPTS"

eval_step() {  # eval_step NAME CONFIG WEIGHTS OUTPUT [EVAL_TEACHER]
    step "$1" "$4/eval_results.json" make_step eval EVAL_CONFIG="$2" EVAL_WEIGHTS="$3" \
        EVAL_OUTPUT="$4" EVAL_TEACHER="${5:-}" OPTS="$DEMO_EVAL_OPTS"
}
cost_step() {  # cost_step NAME STUDENT_WEIGHTS OUTPUT: matched cost of a student to the teacher
    # shellcheck disable=SC2046
    step "$1" "$3" "$PYTHON" scripts/measure_matched_cost.py \
        $(printf -- '--dataset %s %s %s ' $DATASETS) --config-file "$MGD_DEMO_CONFIG" \
        --teacher "$DEMO_DIR/base$TAG-R50/model_final.pth" --student "$2" --out "$3"
}
# Both students of a seed share everything (schedule, data, input size, norms, seed, initial
# weights) but the distillation.
for seed in $(seq 1 "$SEEDS"); do
    run=$DEMO_DIR/seed$seed
    step "student R18, seed $seed" "$run/base$TAG-R18/model_final.pth" make_step base DEPTH=18 RESUME=1 \
        BASE_CONFIG="$STUDENT_CONFIG" OUTPUT_DIR="$run" OPTS="SEED $seed $NO_FINAL_EVAL $DEMO_OPTS"
    step "MGD, seed $seed" "$run/mgd/model_final.pth" make_step distill RESUME=1 \
        MGD_CONFIG="$MGD_DEMO_CONFIG" MERGED="$DEMO_DIR/weights/T50-S18.pkl" \
        MGD_OUTPUT="$run/mgd" OPTS="$(cat "$DEMO_DIR/loss_factors.txt") SEED $seed $NO_FINAL_EVAL $DEMO_OPTS"
    step "convert-all, seed $seed" "$run/mgd/model_final.pkl" make_step convert-all MGD_OUTPUT="$run/mgd"
    eval_step "eval student, seed $seed" "$STUDENT_CONFIG" \
        "$run/base$TAG-R18/model_final.pth" "$run/eval/student"
    eval_step "eval MGD, seed $seed" "$MGD_DEMO_CONFIG" "$run/mgd/model_final.pkl" \
        "$run/eval/mgd"
    cost_step "cost student, seed $seed" "$run/base$TAG-R18/model_final.pth" "$run/matched_cost_student.json"
    cost_step "cost MGD, seed $seed" "$run/mgd/model_final.pth" "$run/matched_cost_mgd.json"
done
# The teacher as the distillation saw it: from seed 1's MGD checkpoint (t_net).
eval_step "eval teacher" "$MGD_DEMO_CONFIG" "$DEMO_DIR/seed1/mgd/model_final.pth" \
    "$DEMO_DIR/eval/teacher" 1

collect=(--collect teacher="$DEMO_DIR/eval/teacher/eval_results.json")
for name in student mgd; do
    for seed in $(seq 1 "$SEEDS"); do
        collect+=(--collect "$name=$DEMO_DIR/seed$seed/eval/$name/eval_results.json")
    done
done
for name in student mgd; do
    for seed in $(seq 1 "$SEEDS"); do
        collect+=(--matched-cost "$name=$DEMO_DIR/seed$seed/matched_cost_$name.json")
    done
done
rm -f "$DEMO_DIR/results.json"
"$PYTHON" scripts/summarize_results.py "$DEMO_DIR/results.json" "${collect[@]}" > "$DEMO_DIR/results.txt"
"$PYTHON" scripts/plot_runs.py --runs teacher="$DEMO_DIR/base$TAG-R50" student="$DEMO_DIR/seed1/base$TAG-R18" \
    mgd="$DEMO_DIR/seed1/mgd" --ap-table "$DEMO_DIR/results.json" --out "$DEMO_DIR/plots" > /dev/null

echo
load=$(uptime | sed 's/.*load averages*: //')   # other work on the machine inflates the times
echo "Step times ($(getconf _NPROCESSORS_ONLN) CPU cores, load average now: $load; 'kept' = output already there):"
printf '  %s\n' "${timings[@]}"
printf '  %-28s %7ss\n' total $(( $(date +%s) - demo_start ))
echo
echo "COCO box AP on the synthetic val split ($DEMO_DIR/results.json;"
echo "students: mean ± std over $SEEDS seed(s)):"
cat "$DEMO_DIR/results.txt"
echo "Plots: $(ls "$DEMO_DIR"/plots/*.png | tr '\n' ' ')"
