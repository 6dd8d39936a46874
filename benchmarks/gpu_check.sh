#!/usr/bin/env bash
# The GPU checks, in one call of a lent machine: versions, benchmarks/mfu.py for phi-1-small and
# phi-1 (the configs' attention dropout 0.1, and 0 so cuDNN's fused attention can run), then the
# README's main job (configs/tiny.py) on the GPU, the sampling tests and phi-1 sampling speed,
# and the train-step and sampling comparisons with torch on the GPU. Wheels missing there travel
# in .whl/.
# (Do not carry flax: the machine's flax matches its jax; flax 0.12.8 fails on jax 0.11.)
# Usage: bash benchmarks/gpu_check.sh OUT_DIR [mfu,tiny,sample,torch]
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [mfu,tiny,sample,torch]}
parts=${2:-mfu,tiny,sample,torch}
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax, orbax.checkpoint as o, grain; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, 'grain', grain.__version__, jax.devices())"
  if [[ $parts == *mfu* ]]; then
    timeout 400 python3 benchmarks/mfu.py --configs=phi1_small,phi1 --attn_dropout=config,0 --microbatches=16,8,4 --steps=5
    echo "mfu.py exit $?"
  fi
  if [[ $parts == *tiny* ]]; then
    timeout 100 python3 -m phi1_jax.train --config=configs/tiny.py --workdir=/tmp/tiny_gpu
    echo "tiny exit $?"
    tail -n 3 /tmp/tiny_gpu/metrics.jsonl
  fi
  if [[ $parts == *sample* ]]; then
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_sample.py
    timeout 200 python3 benchmarks/gpu_sample.py
  fi
  if [[ $parts == *torch* ]]; then  # the CPU benchmarks with torch on the GPU too, float32 on both
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU
    timeout 200 python3 benchmarks/train_throughput.py --torch_device=cuda --d_model=1024 --layers=8 --heads=16 \
      --mlp=4096 --vocab=51200 --seq_len=1024 --batch=8 --steps=5 --repeats=3
    timeout 150 python3 benchmarks/sample_throughput.py --torch_device=cuda --repeats=3
  fi
} 2>&1 | tee "$out/log"
