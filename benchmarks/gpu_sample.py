"""Greedy KV-cache sampling speed of a phi-1-shaped model (random weights) on the device present.

    python benchmarks/gpu_sample.py [--batch=16] [--new_tokens=256] [--dtype=bfloat16]

Prompts of 100-400 random tokens, left-padded; the first call (compilation) is not timed.
"""

import argparse
import dataclasses
import time

import jax
import numpy as np
from flax import nnx

from phi1_jax.inference import sampler as sample
from phi1_jax.model.config import PHI1
from phi1_jax.model.phi import Phi


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--new_tokens", type=int, default=256)
  ap.add_argument("--dtype", default="bfloat16")
  args = ap.parse_args()
  cfg = dataclasses.replace(PHI1, dtype=args.dtype)
  model = Phi(cfg, rngs=nnx.Rngs(0))
  rng = np.random.RandomState(0)
  prompts = [rng.randint(1, 50000, n).tolist() for n in rng.randint(100, 401, args.batch)]
  t0 = time.perf_counter()
  sample.generate(model, prompts, max_new_tokens=args.new_tokens)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    sample.generate(model, prompts, max_new_tokens=args.new_tokens)
    times.append(time.perf_counter() - t0)
  best = min(times)
  print(
    f"phi-1 shape (1.42B params, {args.dtype} compute), {jax.devices()[0].device_kind}: batch {args.batch}, "
    f"{args.new_tokens} new tokens, greedy: {args.batch * args.new_tokens / best:,.0f} tokens/s "
    f"({best:.2f} s, best of 3; first call with compilation {compile_s:.1f} s)"
  )


if __name__ == "__main__":
  main()
