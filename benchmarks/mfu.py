r"""Training throughput and MFU of phi-1-small and phi-1 on the devices present, synthetic batches.

    python benchmarks/mfu.py                    # GPU/TPU: seq 2048, the configs' models and remat
    python benchmarks/mfu.py --small            # CPU: 2 layers x 256 wide, seq 256 (about a minute)
    python benchmarks/mfu.py --configs=phi1 --attn_dropout=0.1 --attn_impl=auto,xla   # kernel vs unfused

The `attention` column says which attention ran: "pallas" (phi1_jax.model.flash's fused kernel with
dropout inside, tiles from PHI1_FLASH_BLOCKS or the defaults), "cudnn" (jax's cuDNN fused
attention, no dropout) or "xla" (unfused; with dropout the probabilities are written out).

The trainer's own state creation and jitted step (`state_shardings`, `create_state`,
`jit_train_step`) on a mesh of all devices (data=1, fsdp=all), one microbatch per step. The
microbatch per device is the largest of --microbatches that compiles and runs (an out-of-memory
error moves to the next). Warm-up steps (compilation included) are not timed. MFU counts
`metrics.flops_per_token` against `metrics.peak_flops` (dense bf16) of every device; on CPU the
peak is unknown and MFU is not reported.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import traceback
from pathlib import Path

import jax
import numpy as np
from ml_collections import config_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "configs"))

from phi1_jax.model import flash
from phi1_jax.model import sharding
from phi1_jax.train.checks import model_config_of  # noqa: E402
from phi1_jax.train.flops import flops_per_token, peak_flops  # noqa: E402
from phi1_jax.train.state import create_state, state_shardings  # noqa: E402
from phi1_jax.train.step import jit_train_step  # noqa: E402

SMALL_SHAPES = dict(n_layers=2, d_model=256, n_heads=4, head_dim=64, mlp_dim=1024, vocab_size=4096)


def load_config(
  name: str,
  seq_len: int,
  small: bool,
  attn_dropout: float | None = None,
  remat: str | None = None,
  attn_impl: str | None = None,
):
  config = __import__(name).get_config()
  if remat is not None:
    config.model.remat = remat
  if attn_impl is not None:
    config.model.attention_impl = attn_impl
  if attn_dropout is not None:  # 0 lets cuDNN's fused attention run; the paper's 0.1 needs the probabilities
    config.model.attn_dropout = attn_dropout
  if small:
    config.model.update(SMALL_SHAPES)
  config.seq_len = seq_len
  config.model.max_seq_len = max(config.model.max_seq_len, seq_len)
  config.loss_chunk_size = min(config.loss_chunk_size, seq_len) if config.loss_chunk_size else 0
  config.grad_accum_steps = 1
  config.mesh = config_dict.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  return config


def measure(config, micro_per_device: int, warmup: int, steps: int) -> dict:
  """Step time of one optimizer step of micro_per_device sequences on every device."""
  mesh = sharding.make_mesh(config.mesh)
  n = jax.device_count()
  config.batch_size = micro_per_device * n
  graphdef, _, state_shard, tx, _ = state_shardings(config, mesh)
  state = create_state(config, tx, state_shard)
  step = jit_train_step(graphdef, tx, config, mesh, state_shard)
  rows = config.batch_size // jax.process_count()
  rng = np.random.default_rng(jax.process_index())
  tokens = rng.integers(0, config.model.vocab_size, (1, rows, config.seq_len + 1), dtype=np.int32)
  batch = sharding.global_batch(tokens, mesh, leading_dims=1)
  for _ in range(warmup):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t0) / steps
  tokens_per_step = config.batch_size * config.seq_len
  model_cfg = model_config_of(config)
  peak = peak_flops(jax.devices()[0])
  flops_s = flops_per_token(model_cfg, config.seq_len) * tokens_per_step / step_s
  return {
    "micro": micro_per_device,
    "step_s": step_s,
    "tok_s_dev": tokens_per_step / step_s / n,
    "mfu": flops_s / (peak * n) if peak else None,
    "loss": float(metrics["loss"]),
  }


def attention_used(model, seq_len: int) -> str:
  """Which attention model.attention runs for this config on this backend (see its dispatch)."""
  impl, gpu = model.attention_impl, jax.default_backend() == "gpu"
  probe = jax.ShapeDtypeStruct((1, seq_len, model.n_heads, model.head_dim), model.dtype)
  kernel = not model.doc_mask and flash.fits(probe, probe) and (impl == "pallas" or (impl == "auto" and gpu))
  if kernel and (model.attn_dropout > 0 or impl == "pallas"):
    return "pallas"
  if model.attn_dropout > 0:
    return "xla"
  if impl in ("auto", "pallas"):
    return "cudnn" if gpu and model.dtype in ("bfloat16", "float16") and not model.doc_mask else "xla"
  return impl


def _oom(e: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="phi1_small,phi1")
  parser.add_argument("--seq_len", type=int, default=0, help="default 2048 (256 with --small)")
  parser.add_argument("--small", action="store_true", help="2-layer, 256-wide models: a CPU smoke run")
  parser.add_argument(
    "--microbatches", default="", help="sequences per device to try, largest first (default 16,8,4,2,1; 2 with --small)"
  )
  parser.add_argument(
    "--attn_dropout",
    default="config",
    help="comma list of attention-dropout rates to measure; 'config' keeps the config's",
  )
  parser.add_argument("--remat", default="config", help="comma list of remat policies; 'config' keeps the config's")
  parser.add_argument(
    "--attn_impl",
    default="config",
    help="comma list of model.attention_impl values (xla, cudnn, pallas, auto); 'config' keeps the config's",
  )
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  seq_len = args.seq_len or (256 if args.small else 2048)
  candidates = [int(m) for m in (args.microbatches or ("2" if args.small else "16,8,4,2,1")).split(",")]
  dev = jax.devices()[0]
  print(
    f"{jax.device_count()} x {dev.device_kind} ({dev.platform}); seq_len {seq_len}"
    + ("; small shapes " + str(SMALL_SHAPES) if args.small else ""),
    flush=True,
  )
  dropouts = [None if d == "config" else float(d) for d in args.attn_dropout.split(",")]
  remats = [None if r == "config" else r for r in args.remat.split(",")]
  impls = [None if a == "config" else a for a in args.attn_impl.split(",")]
  print(f"flash-attention tiles: {flash.DEFAULT_BLOCKS.spec()} (PHI1_FLASH_BLOCKS)", flush=True)
  print(
    f"{'config':<12} {'remat':<10} {'attn drop':>9} {'attention':>9} {'micro/dev':>9} {'step s':>9} "
    f"{'tok/s/dev':>11} {'MFU':>7}",
    flush=True,
  )
  failures = 0
  for name, dropout, remat, impl in itertools.product(args.configs.split(","), dropouts, remats, impls):
    for micro in candidates:
      config = load_config(name, seq_len, args.small, dropout, remat, impl)
      used = attention_used(model_config_of(config), seq_len)
      row = f"{name:<12} {config.model.remat:<10} {config.model.attn_dropout:>9g} {used:>9} {micro:>9}"
      try:
        r = measure(config, micro, args.warmup, args.steps)
      except Exception as e:  # noqa: BLE001 -- an OOM means: try a smaller microbatch
        if _oom(e):
          print(f"{row} out of memory", flush=True)
          continue
        # anything else (a kernel that does not compile here): say so, measure the other rows
        traceback.print_exc(limit=-8)
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"{row} failed: {type(e).__name__}: {first_line}", flush=True)
        failures += 1
        break
      mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
      print(f"{row} {r['step_s']:>9.3f} {r['tok_s_dev']:>11,.0f} {mfu:>7}  loss {r['loss']:.3f}", flush=True)
      break
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
