#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md: RN50 and ViT-B/16 at batch 8 (the paper's) and 64, ours
# (bf16, decoded-image cache, batched evaluation) against the paper-equivalent path (fp32,
# JPEG DataLoader, per-image evaluation loop timed on 1,000 test images and scaled to 4,952).
#
#   bash bench/run_gpu_bench.sh [RESULTS_DIR]     # default: $OUT when set, else bench/results
#
# Writes gpu.txt, bench.log and one JSON per run into RESULTS_DIR (7 files); after the four
# runs, trains the demo config on the GPU in bf16 and in fp32 (seed 0, both mAP lines in
# bench.log), then repeats ViT-B/16 at batch 64 with the forward pass compiled (--compile).
# Needs python3 (or $PYTHON) with torch, torchvision, pillow, numpy, scipy, scikit-learn, tqdm,
# regex and ftfy, and the CLIP vocabulary. On a machine without network or ftfy, put the ftfy
# and wcwidth wheels and bpe_simple_vocab_16e6.txt.gz into .whl/ (git-ignored) and carry it:
#   python3 -m pip download --no-deps -d .whl ftfy==6.3.1 wcwidth==0.9.4
#   cp ../shared/data/clip/bpe_simple_vocab_16e6.txt.gz .whl/
set -euo pipefail
cd "$(dirname "$0")/.."
results="${1:-${OUT:-bench/results}}"
python="${PYTHON:-python3}"
mkdir -p "$results"

if ! "$python" -c "import ftfy" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if [[ -z "${TAILCLIP_BPE_PATH:-}" && -f .whl/bpe_simple_vocab_16e6.txt.gz ]]; then
  export TAILCLIP_BPE_PATH="$PWD/.whl/bpe_simple_vocab_16e6.txt.gz"
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$results/gpu.txt"
"$python" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$results/gpu.txt"
failed=0
for model in RN50 ViT-B/16; do
  for batch in 8 64; do
    name="${model//\//}_batch$batch"
    echo "=== $model, batch $batch" | tee -a "$results/bench.log"
    "$python" bench/bench_train.py --device cuda --model "$model" --batch-size "$batch" --precision bf16 \
      --input cache --paper-eval-images 1000 --json "$results/$name.json" 2>&1 | tee -a "$results/bench.log" \
      || { echo "=== FAILED: $model, batch $batch" | tee -a "$results/bench.log"; failed=1; }
  done
done
# The bf16 target on the GPU (within 1 mAP point of fp32): the demo config (seed 0) in bf16 and in fp32.
for precision in bf16 fp32; do
  echo "=== demo, cuda, $precision" | tee -a "$results/bench.log"
  "$python" train.py --config=configs/demo.py --set device=cuda --set precision="$precision" \
    --set run_dir="/tmp/tailclip-demo-$precision" 2>&1 | grep -E "^(epoch|val mAP)" | tee -a "$results/bench.log" \
    || { echo "=== FAILED: demo, $precision" | tee -a "$results/bench.log"; failed=1; }
done
# Whether `compile = True` pays off: the target case once more, the forward pass compiled.
echo "=== ViT-B/16, batch 64, compiled" | tee -a "$results/bench.log"
"$python" bench/bench_train.py --device cuda --model ViT-B/16 --batch-size 64 --precision bf16 --input cache \
  --compile --paper-eval-images 200 --json "$results/ViT-B16_batch64_compile.json" 2>&1 | tee -a "$results/bench.log" \
  || { echo "=== FAILED: ViT-B/16, batch 64, compiled" | tee -a "$results/bench.log"; failed=1; }
exit $failed
