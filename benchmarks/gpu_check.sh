#!/usr/bin/env bash
# The GPU checks, in one call of a lent machine (benchmarks/RESULTS.md, "prepared for the next GPU
# session", gives the exact call). Parts, in this order:
#   attn    tests/test_attention.py with the kernel compiled by Triton, then
#           benchmarks/attention_bench.py (kernel tilings vs cuDNN and XLA at phi-1's layer shape;
#           the fastest tiling is exported as PHI1_FLASH_BLOCKS for the parts after it)
#   mfu     benchmarks/mfu.py: phi-1 and phi-1-small, the configs' attention dropout 0.1 (the Pallas
#           kernel) and 0 (cuDNN)
#   loader  benchmarks/loader_throughput.py against the phi-1 (dropout 0.1) tokens/s just measured
#           (dropout 0 if that row failed)
#   bf16    benchmarks/train_throughput.py, phi-1-small, bfloat16, torch on the same GPU
#   base    the baseline on this card: phi-1 with dropout 0.1 through XLA's unfused attention
#   tiny, sample, torch    (not in the default) the README's tiny run, the sampling tests and
#           speed, the float32 train/sampling comparisons with torch
# Every part runs under a timeout clamped to what is left of GPU_CHECK_BUDGET seconds (default
# 540), so the call ends inside the device tool's 600 s and says which parts it skipped.
# Wheels missing there travel in .whl/ (bash benchmarks/gpu_wheels.sh fetches them here).
# GPU_CHECK_SMALL=1 runs the default parts at the benchmarks' CPU smoke sizes (a dry run here).
# Usage: bash benchmarks/gpu_check.sh OUT_DIR [attn,mfu,loader,bf16,base,tiny,sample,torch]
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [attn,mfu,loader,bf16,base,tiny,sample,torch]}
parts=${2:-attn,mfu,loader,bf16,base}
budget=${GPU_CHECK_BUDGET:-540}
mkdir -p "$out"
if [[ -z ${GPU_CHECK_SMALL:-} ]] && compgen -G ".whl/*.whl" >/dev/null; then  # cp312 wheels for that machine
  rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
if [[ -n ${GPU_CHECK_SMALL:-} ]]; then
  bench_args=(--small)
  mfu_args=(--small --microbatches=2 --steps=2 --warmup=1)
  base_args=(--small --microbatches=2 --steps=2 --warmup=1)
  loader_args=(--small)
  bf16_args=(--torch_device=cpu --dtype=bfloat16 --layers=2 --steps=2 --repeats=1)
else
  bench_args=()
  mfu_args=("--microbatches=16,8,4" --steps=5)
  base_args=("--microbatches=8,4" --steps=3)
  loader_args=()
  bf16_args=(--torch_device=cuda --dtype=bfloat16 --d_model=1024 --layers=20 --heads=16 --mlp=4096 --vocab=51200
             --seq_len=2048 --batch=8 --steps=5 --repeats=3)
fi

# step NAME MAX_SECONDS CMD...: runs CMD under min(MAX_SECONDS, seconds left), logging to $out/NAME.log
step() {
  local name=$1 max=$2; shift 2
  local left=$((budget - SECONDS))
  local limit=$((max < left ? max : left))
  if ((limit < 20)); then
    echo "== $name: skipped, ${left}s of the budget left"
    return 0
  fi
  echo "== $name (limit ${limit}s, at ${SECONDS}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name exit $rc$([[ $rc == 124 ]] && echo ' (timed out)') after $((SECONDS))s"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'grain', grain.__version__, 'torch', torch.__version__, jax.devices())"
  if [[ $parts == *attn* ]]; then
    step attn_tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py
    step attn_bench 150 python3 benchmarks/attention_bench.py --best_to="$out/best_tiles" "${bench_args[@]}"
    if [[ -s $out/best_tiles ]]; then
      PHI1_FLASH_BLOCKS=$(cat "$out/best_tiles")
      export PHI1_FLASH_BLOCKS
      echo "PHI1_FLASH_BLOCKS=$PHI1_FLASH_BLOCKS for the parts below"
    fi
  fi
  if [[ $parts == *mfu* ]]; then
    step mfu 330 python3 benchmarks/mfu.py --configs=phi1,phi1_small --attn_dropout=config,0 "${mfu_args[@]}"
  fi
  if [[ $parts == *loader* ]]; then
    # the first measured phi1 row: dropout 0.1 (the kernel), else 0 if that row failed
    trainer=$(awk '$1 == "phi1" && $7 ~ /^[0-9,]+$/ {gsub(",", "", $7); print $7; exit}' "$out/mfu.log" 2>/dev/null)
    if [[ -n $trainer ]]; then
      step loader 90 python3 benchmarks/loader_throughput.py --trainer_tok_s="$trainer" "${loader_args[@]}"
    else
      step loader 150 python3 benchmarks/loader_throughput.py --trainer_config=phi1 --micro=8 "${loader_args[@]}"
    fi
  fi
  if [[ $parts == *bf16* ]]; then
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU
    step bf16 240 python3 benchmarks/train_throughput.py "${bf16_args[@]}"
    unset XLA_PYTHON_CLIENT_PREALLOCATE
  fi
  if [[ $parts == *base* ]]; then
    step base 150 python3 benchmarks/mfu.py --configs=phi1 --attn_dropout=0.1 --attn_impl=xla "${base_args[@]}"
  fi
  if [[ $parts == *tiny* ]]; then
    step tiny 100 python3 -m phi1_jax.train --config=configs/tiny.py --workdir=/tmp/tiny_gpu
    tail -n 3 /tmp/tiny_gpu/metrics.jsonl
  fi
  if [[ $parts == *sample* ]]; then
    step sample_tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_sample.py
    step sample 200 python3 benchmarks/gpu_sample.py
  fi
  if [[ $parts == *torch* ]]; then  # float32 on both
    export XLA_PYTHON_CLIENT_PREALLOCATE=false
    step torch_train 200 python3 benchmarks/train_throughput.py --torch_device=cuda --d_model=1024 --layers=8 --heads=16 \
      --mlp=4096 --vocab=51200 --seq_len=1024 --batch=8 --steps=5 --repeats=3
    step torch_sample 150 python3 benchmarks/sample_throughput.py --torch_device=cuda --repeats=3
  fi
  echo "== done after ${SECONDS}s"
} 2>&1 | tee "$out/log"
