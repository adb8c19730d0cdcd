#!/usr/bin/env bash
# VGG-16 (config D) at 224x224, bf16 compute with float32 parameters, batch 256,
# on ONE GPU: train-step img/s, MFU against a matmul peak measured in the same
# run, evaluation img/s, and the input pipeline's img/s per CPU core (JPEG
# decode + scale jitter S in [256, 512] + 224 crop). Issue #5's target: >= 4,000
# img/s on one H200. Takes 3-5 minutes; the whole script is capped at 8.
#
#   bash experiments/gpu_benchmark.sh [OUT_DIR]     # default experiments/results
#
# Needs jax with CUDA: pip install -r requirements.txt -e '.[cuda]'
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-experiments/results}
mkdir -p "$out_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out="$out_dir/gpu_benchmark_$stamp.json"

if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "gpu_benchmark.sh: error: jax sees no GPU: install jax[cuda12] with" \
       "pip install -r requirements.txt -e '.[cuda]' on a machine with an NVIDIA GPU" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

# Keep compiled programs between runs of this script (compilation is not timed anyway).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/vgg_jax/xla}
timeout 480 python -m vgg_jax.benchmark \
  --variant=D --image_size=224 --batch_size=256 --width=1 --fc_width=4096 \
  --num_classes=1000 --dtype=bfloat16 --devices=1 --steps=20 --windows=3 \
  --measure=train,peak,eval,pipeline --pipeline_images=512 --output="$out"

python - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, p = r['train'], r['pipeline']
print(f"{r['machine']['device_kind']}: VGG-16 224 bf16 batch 256: {t['img_per_sec']:,.0f} img/s "
      f"train, MFU {t['mfu']:.1%} (peak {r['peak']['flops_per_sec'] / 1e12:.0f} TFLOP/s), "
      f"{r['eval']['img_per_sec']:,.0f} img/s eval; pipeline {p['img_per_sec_per_core']:.0f} "
      f"img/s per core: {t['img_per_sec'] / p['img_per_sec_per_core']:.0f} cores feed this GPU")
PY
echo "written: $out"
