#!/bin/bash
# The paper's ablation in miniature: seven objectives on the synthetic demo data, 3 seeds
# each, on the CPU (21 runs of configs/demo.py; every setting keeps the demo's other options,
# the balanced sampler included, unless it names them).
#
#   bash scripts/ablation_demo.sh                  # results in runs/ablation_demo/results.md
#   bash scripts/ablation_demo.sh --set epochs=4   # extra sweep.py options are passed on
#
# Interrupted (Ctrl-C), the same command continues: finished runs are skipped and the
# interrupted one resumes from its checkpoint.
# Python: $PYTHON, else the project's .venv, else python3 (scripts/choose_python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/choose_python.sh
exec "$python" sweep.py --config configs/demo.py --name ablation_demo --seeds 0,1,2 \
    --variant "clip:loss_function=['clip']" \
    --variant "bal:loss_function=['bal']" \
    --variant "clip+bce:loss_function=['clip','bce']" \
    --variant "clip+asl:loss_function=['clip','asl']" \
    --variant "clip+dbfocal:loss_function=['clip','dbfocal']" \
    --variant "tailclip:loss_function=['clip','bal'],use_sample_weights=True" \
    --variant "tailclip-no-sampler:loss_function=['clip','bal'],use_sample_weights=False" \
    "$@"
