#!/bin/bash
# The paper's ablation with ViT-B/16 on VOC-MLT and COCO-MLT, every setting one that the
# authors' logged runs hold (datasets/authors_runs/): the loss terms alone and combined, with
# and without the balanced sampler (sw), the class weights (lw) and label smoothing (ls); lambda
# (asl_mul); the sampling power s (the class-weight power equal to it, as in all their runs).
# Each variant starts from the benchmark's published config and trains as one or more of
# their runs did (tests/test_ablation_paper.py checks each against the runs' logged configs).
# Each row trains the loss its runs trained (datasets/authors_runs/README.md): their loss name
# "asl" built their BAL until 2024-08-15 ~10:00 UTC (our bal, here without class weights and
# label smoothing) and a plain asymmetric loss on the raw logits after (our asl, which has
# neither: the rows asl, clip+asl and clip+asl-sw, with the smoothing and class weights off as
# those runs logged them); their one run of that loss summed over the batch is no row.
#
#   bash scripts/ablation_paper.sh                    # both: 26 + 33 runs of 50 epochs, on a GPU
#   bash scripts/ablation_paper.sh voc_mlt            # one benchmark
#   bash scripts/ablation_paper.sh coco_mlt --seeds 0,1,2   # extra sweep.py options are passed on
#
# Results: runs/ablation_paper_<benchmark>/results.md, with the authors' best and last mAP
# beside each row; python compare.py runs/ablation_paper_<benchmark>/*_seed0 holds each run
# against theirs, epoch by epoch. Interrupted, the same command continues.
# Python: $PYTHON, else the project's .venv, else python3 (scripts/choose_python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/choose_python.sh

LOSS_VARIANTS=(
    "clip:loss_function=['clip'],use_sample_weights=False"
    "bal:loss_function=['bal'],asl_mul=1.0,label_smoothing=0.0,use_sample_weights=False,use_weighted_loss=False"
    "bal-lw-ls:loss_function=['bal'],asl_mul=1.0,use_sample_weights=False"
    "bal-sw-lw-ls:loss_function=['bal'],asl_mul=1.0"
    "clip+bal-sw:label_smoothing=0.0,use_weighted_loss=False"
    "clip+bal-sw-ls:use_weighted_loss=False"
    "clip+bal-sw-lw-ls:"
    "asl:loss_function=['asl'],asl_mul=1.0,label_smoothing=0.0,use_sample_weights=False,use_weighted_loss=False"
    "clip+asl:loss_function=['clip','asl'],label_smoothing=0.0,use_sample_weights=False,use_weighted_loss=False"
    "clip+asl-sw:loss_function=['clip','asl'],label_smoothing=0.0,use_weighted_loss=False"
)
# lambda and s other than the published config's (VOC-MLT 0.4 and 1.35, COCO-MLT 5 and 1.6)
VOC_MLT_LAMBDAS="0.2 0.5 0.75 1.0 1.25 1.5 1.75 2.0 4.0 8.0"
VOC_MLT_POWERS="1.0 1.175 1.525 1.7 1.875 2.0"
COCO_MLT_LAMBDAS="0.4 0.75 1.0 1.25 1.5 1.75 4.0 6.0 8.0 10.0 12.0"
COCO_MLT_POWERS="1.0 1.175 1.35 1.525 1.7 1.875 2.0"
# COCO-MLT's BAL without the sampler (VOC-MLT ran it with the plain loss only), its earlier
# series at lambda 0.4 and s 1.35, and lambda 10 at s 1.7
COCO_MLT_SERIES=(
    "clip+bal:label_smoothing=0.0,use_sample_weights=False,use_weighted_loss=False"
    "clip+bal-sw-lambda=0.4-s=1.35:label_smoothing=0.0,use_weighted_loss=False,asl_mul=0.4,sample_weights_power=1.35,class_weights_power=1.35"
    "clip+bal-sw-ls-lambda=0.4-s=1.35:use_weighted_loss=False,asl_mul=0.4,sample_weights_power=1.35,class_weights_power=1.35"
    "clip+bal-sw-lw-ls-lambda=0.4-s=1.35:asl_mul=0.4,sample_weights_power=1.35,class_weights_power=1.35"
    "lambda=10.0-s=1.7:asl_mul=10.0,sample_weights_power=1.7,class_weights_power=1.7"
)

ablation() {
    local benchmark=$1 lambdas=$2 powers=$3 value
    shift 3
    local args=()
    for value in "${LOSS_VARIANTS[@]}"; do args+=(--variant "$value"); done
    for value in $lambdas; do args+=(--variant "lambda=$value:asl_mul=$value"); done
    for value in $powers; do
        args+=(--variant "s=$value:sample_weights_power=$value,class_weights_power=$value")
    done
    if [ "$benchmark" = coco_mlt ]; then
        for value in "${COCO_MLT_SERIES[@]}"; do args+=(--variant "$value"); done
    fi
    "$python" sweep.py --config "configs/${benchmark}_vitb16.py" --name "ablation_paper_$benchmark" "${args[@]}" "$@"
}

case "${1:-}" in
    voc_mlt) shift; ablation voc_mlt "$VOC_MLT_LAMBDAS" "$VOC_MLT_POWERS" "$@" ;;
    coco_mlt) shift; ablation coco_mlt "$COCO_MLT_LAMBDAS" "$COCO_MLT_POWERS" "$@" ;;
    *)
        # Both sweeps' disk first: each sweep says its own again when it starts.
        ablation voc_mlt "$VOC_MLT_LAMBDAS" "$VOC_MLT_POWERS" "$@" --estimate
        ablation coco_mlt "$COCO_MLT_LAMBDAS" "$COCO_MLT_POWERS" "$@" --estimate
        ablation voc_mlt "$VOC_MLT_LAMBDAS" "$VOC_MLT_POWERS" "$@"
        ablation coco_mlt "$COCO_MLT_LAMBDAS" "$COCO_MLT_POWERS" "$@"
        ;;
esac
