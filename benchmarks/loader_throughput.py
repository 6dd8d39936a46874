r"""Input-pipeline throughput: packed ArrayRecord shards through the trainer's grain pipeline.

    python benchmarks/loader_throughput.py                        # synthetic shards, phi-1 shape
    python benchmarks/loader_throughput.py --trainer_tok_s=49450  # and the ratio to a trainer figure
    python benchmarks/loader_throughput.py --data=/data/code:0.87,/data/textbooks:0.13

What is timed is what the trainer does for every step (phi1_jax/train/loop.py `next_batch`):
`next()` on `pipeline.make_train_dataset` (per-source shuffle, weighted mixture, global batch
order, ArrayRecord reads, decoding), the int32 array reshaped to [G, B/G, L+1] and put on the
devices with `sharding.global_batch`. Without --data, a packed folder of random tokens (the
pack.py record format: seq_len + 1 little-endian int32 per record, group_size:1 shards) is
written to a temporary folder first, two sources mixed 0.87 / 0.13 as configs/phi1.py's data.

The trainer's tokens/s to compare with is --trainer_tok_s, or --trainer_config measures one step
of that config (benchmarks/mfu.py's `measure`, all local devices, --micro sequences per device;
with --small the CPU smoke shapes). The loader should deliver at least 10x what the trainer eats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from ml_collections import config_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from phi1_jax.model import sharding  # noqa: E402
from phi1_jax.data import pipeline  # noqa: E402
from phi1_jax.data.pack import FORMAT, SplitWriter  # noqa: E402


def write_synthetic(out: Path, records: int, seq_len: int, vocab: int, seed: int) -> Path:
  """A packed folder of `records` random-token records (one document each), pack.py's format."""
  out.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  splits = {}
  for split, n in (("train", records), ("eval", 1)):
    writer = SplitWriter(out, split, seq_len, eos_id=0, records_per_shard=max(1, records // 4))
    for _ in range(n + 1):  # each document and its separator add seq_len + 1 tokens: about one record
      writer.add(rng.integers(1, vocab, seq_len, dtype=np.int32))
    splits[split] = writer.finish()
  manifest = {
    "format": FORMAT,
    "seq_len": seq_len,
    "record_len": seq_len + 1,
    "dtype": "int32",
    "tokenizer": {"path": "synthetic", "sha256": "synthetic", "vocab_size": vocab, "eos_id": 0},
    "splits": splits,
    "records": {s: splits[s]["records"] for s in splits},
  }
  (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  return out


def parse_sources(spec: str) -> list[tuple[str, float]]:
  sources = []
  for part in spec.split(","):
    path, _, weight = part.partition(":")
    sources.append((path, float(weight or 1.0)))
  return sources


def trainer_rate(name: str, micro: int, small: bool, seq_len: int) -> float:
  """tokens/s of one trainer step of config `name` on all local devices (benchmarks/mfu.py)."""
  import mfu

  config = mfu.load_config(name, seq_len, small)
  r = mfu.measure(config, micro, warmup=1, steps=3)
  return r["tok_s_dev"] * jax.device_count()


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", default="", help="packed folders with weights, as data.mixture; default synthetic")
  ap.add_argument("--records", type=int, default=4096, help="synthetic records per source")
  ap.add_argument("--seq_len", type=int, default=2048)
  ap.add_argument("--vocab", type=int, default=51200)
  ap.add_argument("--batch", type=int, default=16, help="sequences per step on this host")
  ap.add_argument("--grad_accum", type=int, default=1)
  ap.add_argument("--steps", type=int, default=200, help="batches timed (after the first)")
  ap.add_argument("--read_threads", type=int, default=2)
  ap.add_argument("--trainer_tok_s", type=float, default=0.0, help="the trainer's tokens/s on this host")
  ap.add_argument("--trainer_config", default="", help="or measure it: a config name (phi1, phi1_small)")
  ap.add_argument("--micro", type=int, default=8, help="sequences per device for --trainer_config")
  ap.add_argument(
    "--small",
    action="store_true",
    help="CPU smoke sizes: seq 256, 512 records, 50 steps, --trainer_config at mfu.py --small shapes",
  )
  args = ap.parse_args()
  if args.small:
    args.seq_len, args.records, args.steps = 256, 512, 50
  if args.batch % args.grad_accum:
    print(f"error: --batch={args.batch} must be a multiple of --grad_accum={args.grad_accum}", file=sys.stderr)
    return 2

  with tempfile.TemporaryDirectory() as tmp:
    if args.data:
      sources = parse_sources(args.data)
    else:
      t0 = time.perf_counter()
      sources = [
        (str(write_synthetic(Path(tmp) / name, n, args.seq_len, args.vocab, i)), w)
        for i, (name, n, w) in enumerate((("code", args.records, 0.87), ("textbooks", args.records // 4, 0.13)))
      ]
    try:
      manifests = [pipeline.read_manifest(d) for d, _ in sources]
    except ValueError as e:
      print(f"error: --data: {e}", file=sys.stderr)
      return 2
    seq_len = manifests[0]["seq_len"]
    records = sum(m["splits"]["train"]["records"] for m in manifests)
    if not args.data:
      print(
        f"wrote synthetic shards: {records} records of {seq_len + 1} tokens in {time.perf_counter() - t0:.1f} s",
        flush=True,
      )
    mesh = sharding.make_mesh(config_dict.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    ds = pipeline.make_train_dataset(sources, batch_size=args.batch, seed=0, read_threads=args.read_threads)
    it = iter(ds)
    G = args.grad_accum

    def next_batch():  # phi1_jax/train/loop.py's next_batch
      tokens = np.asarray(next(it)["tokens"], np.int32)
      return sharding.global_batch(tokens.reshape(G, args.batch // G, tokens.shape[-1]), mesh, leading_dims=1)

    t0 = time.perf_counter()
    batch = jax.block_until_ready(next_batch())
    first_s = time.perf_counter() - t0
    per_batch = []
    t0 = time.perf_counter()
    for _ in range(args.steps):
      t1 = time.perf_counter()
      batch = next_batch()
      per_batch.append(time.perf_counter() - t1)
    jax.block_until_ready(batch)
    total = time.perf_counter() - t0
    tokens_per_batch = args.batch * seq_len
    loader = args.steps * tokens_per_batch / total
    print(
      f"loader: {len(sources)} sources, batch {args.batch} x {seq_len} tokens, {args.read_threads} read "
      f"threads, {jax.device_count()} {jax.devices()[0].platform} device(s): first batch {first_s:.2f} s, "
      f"then {loader:,.0f} tokens/s over {args.steps} batches "
      f"(median {statistics.median(per_batch) * 1e3:.2f} ms, max {max(per_batch) * 1e3:.1f} ms per batch)",
      flush=True,
    )

  trainer = args.trainer_tok_s
  if not trainer and args.trainer_config:
    trainer = trainer_rate(args.trainer_config, args.micro, args.small, seq_len)
    print(
      f"trainer: {args.trainer_config}{' (small shapes)' if args.small else ''}, {args.micro} sequences "
      f"per device: {trainer:,.0f} tokens/s",
      flush=True,
    )
  if trainer:
    print(f"loader / trainer tokens/s: {loader / trainer:.1f}x (target >= 10x)", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
