r"""Attention forward + backward at phi-1's layer shape: the Pallas dropout kernel (several tilings)
against cuDNN's fused attention (no dropout) and XLA's unfused path (with and without dropout).

    python benchmarks/attention_bench.py                      # GPU: batch 8, seq 2048, 32 heads x 64, bf16
    python benchmarks/attention_bench.py --small              # CPU: the kernel interpreted (a smoke run)
    python benchmarks/attention_bench.py --best_to=FILE       # writes the fastest tiling (PHI1_FLASH_BLOCKS)

Each row times one jitted program computing the output and dQ, dK, dV (median of --reps after a
warm-up call) and checks it against a reference: the kernel at dropout 0 against cuDNN (or XLA off
GPU), at dropout p against XLA's unfused path with the same mask (model.attention impl "xla",
same key). TFLOP/s counts the causal half of the score matrix: 2 matmuls forward and 5 backward
(the scores recomputed), 3.5 x 4 B N L^2 H / 2 FLOPs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phi1_jax.model import flash  # noqa: E402
from phi1_jax.model.attention import attention  # noqa: E402

DEFAULT_TILES = (
  "128,64,64,64,4,4,2",
  "128,128,64,64,8,4,2",
  "64,64,64,64,4,4,3",
  "128,64,128,64,4,8,2",
  "128,64,64,32,4,4,2",
  "128,32,64,64,4,4,3",
)


def timed(fn, args, reps: int) -> tuple[float, tuple]:
  out = jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def value_and_grads(attn):
  @jax.jit
  def run(q, k, v, do):
    out, vjp = jax.vjp(attn, q, k, v)
    return (out, *vjp(do))

  return run


def rel_err(got, want) -> float:
  got, want = (jnp.asarray(x, jnp.float32) for x in (got, want))
  return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--heads", type=int, default=32)
  ap.add_argument("--head_dim", type=int, default=64)
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--rate", type=float, default=0.1, help="attention dropout of the dropout rows")
  ap.add_argument("--tiles", default=";".join(DEFAULT_TILES), help="';'-separated PHI1_FLASH_BLOCKS specs")
  ap.add_argument("--reps", type=int, default=10)
  ap.add_argument("--small", action="store_true", help="batch 1, seq 128, 2 heads x 64, float32, one tiling")
  ap.add_argument("--best_to", default="", help="write the fastest kernel tiling (with dropout) here")
  args = ap.parse_args()
  if args.small:
    args.batch, args.seq_len, args.heads, args.dtype, args.reps = 1, 128, 2, "float32", 2
    args.tiles = "64,32,64,32"
  B, L, N, H = args.batch, args.seq_len, args.heads, args.head_dim
  on_gpu = jax.default_backend() == "gpu"
  rng = np.random.RandomState(0)
  q, k, v, do = (jnp.asarray(rng.normal(size=(B, L, N, H)), args.dtype) for _ in range(4))
  key = jax.random.key(0)
  flops = 3.5 * 4 * B * N * L * L * H / 2
  dev = jax.devices()[0]
  print(
    f"{dev.device_kind} ({dev.platform}), jax {jax.__version__}: batch {B}, seq {L}, {N} heads x {H}, "
    f"{args.dtype}; forward + backward, median of {args.reps}",
    flush=True,
  )
  print(f"{'implementation':<38} {'dropout':>7} {'ms':>8} {'TFLOP/s':>8}  check", flush=True)

  def row(name, rate, fn, reference=None, ref_name=""):
    try:
      sec, out = timed(value_and_grads(fn), (q, k, v, do), args.reps)
    except Exception as e:  # noqa: BLE001 -- a tiling Triton rejects, an out-of-memory: say so, go on
      print(f"{name:<38} {rate:>7g}   failed: {str(e).splitlines()[0][:120]}", flush=True)
      return None, None
    check = ""
    if reference is not None:
      errs = [rel_err(a, b) for a, b in zip(out, reference)]
      check = f"vs {ref_name}: out {errs[0]:.1e}, dq {errs[1]:.1e}, dk {errs[2]:.1e}, dv {errs[3]:.1e}"
    print(f"{name:<38} {rate:>7g} {sec * 1e3:>8.2f} {flops / sec / 1e12:>8.1f}  {check}", flush=True)
    return sec, out

  model_attn = lambda impl, rate: (
    lambda q, k, v: attention(q, k, v, None, is_causal=True, impl=impl, dropout_rate=rate, key=key if rate else None)
  )
  base_impl = "cudnn" if on_gpu and args.dtype in ("bfloat16", "float16") else "xla"
  _, base = row(f"{base_impl} fused (jax.nn)", 0.0, model_attn(base_impl, 0.0))
  _, xla_drop = row("xla unfused, mask written out", args.rate, model_attn("xla", args.rate))
  seed = flash.seed_from_key(key)
  best = None
  for spec in args.tiles.split(";"):
    blocks = flash.Blocks.parse(spec)
    if not flash.fits(q, k, blocks):
      print(f"pallas {spec:<31} does not fit this shape", flush=True)
      continue
    for rate, ref, ref_name in ((0.0, base, base_impl), (args.rate, xla_drop, "xla same mask")):
      fn = lambda q, k, v, rate=rate, blocks=blocks: flash.flash_attention(q, k, v, seed, rate, blocks=blocks)
      sec, _ = row(f"pallas {spec}", rate, fn, ref, ref_name)
      if rate > 0 and sec is not None and (best is None or sec < best[0]):
        best = (sec, spec)
  if best is not None:
    print(f"fastest tiling with dropout: PHI1_FLASH_BLOCKS={best[1]} ({best[0] * 1e3:.2f} ms)", flush=True)
    if args.best_to:
      Path(args.best_to).write_text(best[1] + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
