#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one command: first the GPU conformance suite
# (tests/gpu), then the benchmarks, within a time budget (default 460 s, $BENCH_BUDGET_S), and
# one JSON report with every figure and every check's outcome.
#
#   bash bench/run_gpu_bench.sh [RESULTS_DIR]     # default: $OUT when set, else bench/results
#
# RESULTS_DIR receives three files (the device tool brings back 8 at most): report.json,
# bench.log (what the stages printed, the last lines of each) and logs.tar.gz (every stage's
# whole log and JSON, from the working folder $BENCH_WORK_DIR, default /tmp/tailclip-bench-run).
#
# Stages, in order of priority; a stage that fails is recorded and the next one runs; one that
# would not fit in the time left is recorded as skipped:
#   gpu_suite         pytest tests/gpu (outcome and figures of every check: gpu_suite.json)
#   vitb16_b64_fast   ViT-B/16, batch 64, the fast mode (bf16, TF32) vs the paper path
#   demo_fast/_fp32   train.py on the demo config, fast mode and the paper's numerics (val mAP)
#   vitb16_b64_fp32   ViT-B/16, batch 64, the paper's numerics (fp32, PyTorch's TF32 flags)
#   rn50_b8_fast      RN50 at the paper's batch 8, fast mode
#   vitb16_b64_compiled  the fast mode with compile = True
# The paper path of bench_train.py is float32 with a JPEG DataLoader and a per-image
# evaluation loop (timed on part of the test split and scaled to 4,952 images).
#
# Without a CUDA device every stage reports "no CUDA device" (the suite's tests are skipped);
# BENCH_ON_CPU=1 runs the benchmark stages on the CPU with tiny backbones, to check the script.
# Needs python3 (or $PYTHON) with torch, torchvision, pillow, numpy, scipy, scikit-learn, tqdm,
# regex, pytest and ftfy, and the CLIP vocabulary. On a machine without network or ftfy, put
# the ftfy and wcwidth wheels and bpe_simple_vocab_16e6.txt.gz into .whl/ (git-ignored) and
# carry it:
#   python3 -m pip download --no-deps -d .whl ftfy==6.3.1 wcwidth==0.9.4
#   cp ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz .whl/
set -uo pipefail
cd "$(dirname "$0")/.."
output="${1:-${OUT:-bench/results}}"
results="${BENCH_WORK_DIR:-/tmp/tailclip-bench-run}"
python="${PYTHON:-python3}"
budget="${BENCH_BUDGET_S:-460}"
started=$SECONDS
rm -rf "$results"
mkdir -p "$results" "$output"
: > "$results/stages.jsonl"

if ! "$python" -c "import ftfy" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z "${TAILCLIP_BPE_PATH:-}" && -f .whl/bpe_simple_vocab_16e6.txt.gz ]]; then
  export TAILCLIP_BPE_PATH="$PWD/.whl/bpe_simple_vocab_16e6.txt.gz"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$results/gpu.txt" 2>&1
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" >> "$results/gpu.txt" 2>&1
if "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  device=cuda vit=ViT-B/16 rn=RN50 sizes=()
elif [[ "${BENCH_ON_CPU:-0}" == 1 ]]; then
  device=cpu vit=ViT-tiny rn=RN-tiny sizes=(--train-images 200 --test-images 600 --steps 5)
else
  device="" vit=ViT-B/16 rn=RN50 sizes=()
fi

# stage NAME ESTIMATED_SECONDS MAX_SECONDS COMMAND...: run COMMAND (output in NAME.log) for
# MAX_SECONDS at most (0: the time left), unless it would not fit in the time left; append
# its outcome to stages.jsonl.
stage() {
  local name=$1 estimate=$2 most=$3; shift 3
  local left=$((budget - (SECONDS - started))) outcome rc="null" begun=$SECONDS
  if [[ $name != gpu_suite && -z $device ]]; then
    outcome="skipped: no CUDA device"
  elif ((left < estimate)); then
    outcome="skipped: ${left} s left of the ${budget} s budget, about ${estimate} s needed"
  else
    echo "=== $name (${left} s left)" | tee -a "$results/bench.log"
    timeout --kill-after=10 $((most > 0 && most < left ? most : left)) "$@" > "$results/$name.log" 2>&1
    rc=$?
    tail -n 25 "$results/$name.log" | tee -a "$results/bench.log"
    case $rc in 0) outcome=completed ;; 124|137) outcome="failed: stopped at its time limit" ;; *) outcome="failed: exit code $rc" ;; esac
  fi
  echo "=== $name: $outcome" | tee -a "$results/bench.log"
  printf '{"stage": "%s", "outcome": "%s", "exit_code": %s, "seconds": %d}\n' \
    "$name" "$outcome" "$rc" $((SECONDS - begun)) >> "$results/stages.jsonl"
}

bench=("$python" bench/bench_train.py --device "$device" --input cache "${sizes[@]}")
demo=("$python" train.py --config=configs/demo.py --overwrite --set device="$device")  # seed 0; a rerun replaces the run

# The suite stops after 300 s (its checks so far are in gpu_suite.json), to leave the rest to the benchmarks.
# In one process (-n 0, not the CPU suite's two workers): one GPU, one report file, undisturbed timings.
stage gpu_suite 60 300 env TAILCLIP_GPU_REPORT="$results/gpu_suite.json" \
  "$python" -m pytest tests/gpu -q -rA -p no:cacheprovider -n 0 --timeout 240
stage vitb16_b64_fast 100 0 "${bench[@]}" --model "$vit" --batch-size 64 --precision bf16 --tf32 \
  --paper-eval-images 500 --json "$results/vitb16_b64_fast.json"
stage demo_fast 45 0 "${demo[@]}" --set precision=bf16 --set tf32=True --set run_dir=/tmp/tailclip-bench-fast
stage demo_fp32 45 0 "${demo[@]}" --set precision=fp32 --set tf32=False --set run_dir=/tmp/tailclip-bench-fp32
stage vitb16_b64_fp32 80 0 "${bench[@]}" --model "$vit" --batch-size 64 --precision fp32 --steps 20 \
  --paper-eval-images 200 --json "$results/vitb16_b64_fp32.json"
stage rn50_b8_fast 70 0 "${bench[@]}" --model "$rn" --batch-size 8 --precision bf16 --tf32 \
  --paper-eval-images 500 --json "$results/rn50_b8_fast.json"
stage vitb16_b64_compiled 150 0 "${bench[@]}" --model "$vit" --batch-size 64 --precision bf16 --tf32 --compile \
  --paper-eval-images 100 --json "$results/vitb16_b64_compiled.json"

"$python" bench/gpu_report.py "$results" $((SECONDS - started)) "$budget"
cp "$results/report.json" "$results/bench.log" "$output/"
tar -czf "$output/logs.tar.gz" -C "$(dirname "$results")" "$(basename "$results")"
