#!/usr/bin/env bash
# Fetches, on this (networked) machine, the wheels that the lent GPU machine lacks into .whl/
# (git-ignored), for the device call's `carry`: grain and array_record (data pipeline, loader
# benchmark), ml_collections (configs), portpicker (grain needs it), tensorboardX (the trainer's
# metrics), importlib_resources (etils.epath, under array_record). The GPU machine already has
# jax 0.11 (CUDA), flax, optax, orbax, torch, transformers, sentencepiece, etils, cloudpickle,
# protobuf, pyyaml, psutil. Its Python is 3.12.
# Do not add flax: the machine's flax matches its jax (flax 0.12.8 fails on jax 0.11).
# Usage: bash benchmarks/gpu_wheels.sh     (about 5 MB; gpu_check.sh installs them there)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  grain==0.2.18 array_record==0.8.6 ml_collections==1.1.0 portpicker==1.6.0 tensorboardX==2.6.5 \
  importlib_resources==6.5.2
ls -l .whl
du -sh .whl
