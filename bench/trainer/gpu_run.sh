#!/usr/bin/env bash
# One device call: the GPU test tier, then gpu_bench.py (1b mixed/quickstart default vs plain, packed 4096-token rows
# on 1b and 8b, 16k-token rows on 1b, compiled and not). Each part has its own time cap; one failing part does not stop the next. Everything lands in $OUT.
#   bash bench/trainer/gpu_run.sh            (needs the wheels in .whl/ that the device lacks: see bench/trainer/README.md)
set -o pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore TUNELOOP_METRICS_PORT=0
if [ "${NO_WHEELS:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/operator:$PWD/trainer-image${PYTHONPATH:+:$PYTHONPATH}"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'peft', peft.__version__)"
  python3 -c "import deepspeed, bitsandbytes, liger_kernel, pydantic; print('deepspeed', deepspeed.__version__, 'bnb', bitsandbytes.__version__, 'pydantic', pydantic.VERSION)" 2>&1 | tail -1
} 2>&1 | tee "$OUT/env.txt"

part() {  # part NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "=== $name (cap ${secs}s) $(date -u +%T)"
  local t0=$SECONDS
  timeout -k 10 "$secs" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v -i "warn" | tail -n 60
  echo "=== $name rc=$? $((SECONDS - t0))s"
}

if [ "${SKIP_TESTS:-0}" != 1 ]; then
  part gpu-tests "${TESTS_CAP:-240}" python3 -m pytest -m gpu --run-gpu tests/gpu -q -p no:cacheprovider -rs --durations=10
fi
RUNS=${RUNS:-"1b/quickstart/16/4/tuneloop 1b/mixed/16/30/plain 1b/mixed/16/30/tuneloop 1b/quickstart/16/30/plain 1b/quickstart/16/30/tuneloop \
8b/rows4096/1/30/tuneloop 8b/rows4096/1/40/tuneloop+compile 1b/rows16384/1/30/tuneloop 1b/rows16384/1/30/tuneloop+compile \
1b/rows4096/1/40/tuneloop 1b/rows4096/1/40/tuneloop+noops"}
args=(); for r in $RUNS; do args+=(--run "$r"); done
part gpu-bench "${BENCH_CAP:-250}" python3 bench/trainer/gpu_bench.py "${args[@]}" --json "$OUT/gpu.json"
echo "done $(date -u +%T)"
