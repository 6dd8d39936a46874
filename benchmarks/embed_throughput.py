"""Embedding throughput: phi1_jax.stages.embed.Embedder against transformers' PhiModel, then `curate filter`
documents/s with 1 and 2 workers.

Part 1: both sides embed the same documents (random token ids, lengths uniform in
[--min_len, --max_len]) with the same random PhiForCausalLM weights, in the same batches (sorted by
length, --batch per batch), masked-mean pooling of the final hidden states, float32. transformers
pads each batch to its longest document; ours pads to a power-of-two bucket. Warm-up (compilation)
is excluded; each side's time is the best of --repeats interleaved runs. Prints tokens/s of both,
the ratio and the largest difference between the two sides' vectors.

Part 2 (--filter): `python -m phi1_jax.curate filter` on stdlib folders with --tasks=2 and
--workers=1, then 2 (fresh output folders), with a classifier trained on the same embedder.
Prints documents/s of each (whole command, start-up included).

  PYTHONPATH=. python benchmarks/embed_throughput.py [--d_model=512 --n_layers=8] [--filter]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def compare(args, tmp: Path):
  import jax
  import torch
  from transformers import PhiConfig, PhiForCausalLM

  from phi1_jax.model import checkpoint
  from phi1_jax.model import hf as convert
  from phi1_jax.data.tokenizer import train_tokenizer
  from phi1_jax.stages.embed import Embedder

  if jax.default_backend() != "cpu":  # torch computes float32 matmuls in full float32 by default
    jax.config.update("jax_default_matmul_precision", "highest")
  torch.manual_seed(0)
  hf_cfg = PhiConfig(
    vocab_size=args.vocab_size,
    hidden_size=args.d_model,
    intermediate_size=4 * args.d_model,
    num_hidden_layers=args.n_layers,
    num_attention_heads=args.n_heads,
    max_position_embeddings=2048,
    pad_token_id=0,
    bos_token_id=None,
    eos_token_id=None,
  )
  hf = PhiForCausalLM(hf_cfg).eval()
  tensors = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  cfg, params = convert.hf_to_params(hf_cfg.to_dict(), tensors)
  checkpoint.save_params(tmp / "ckpt", cfg, params)
  train_tokenizer([Path(os.__file__).parent / "json"], 400, tmp / "ckpt")  # Embedder wants one; ids are given
  embedder = Embedder(tmp / "ckpt", max_len=args.max_len, batch_size=args.batch)
  device = torch.device(args.torch_device)
  body = hf.model.to(device)

  rng = np.random.RandomState(0)
  lengths = rng.randint(args.min_len, args.max_len + 1, args.docs)
  docs = [rng.randint(1, args.vocab_size, n).tolist() for n in lengths]
  n_tokens = int(lengths.sum())

  def torch_embed():
    out = np.zeros((len(docs), args.d_model), np.float32)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))  # the same batches as ours
    with torch.inference_mode():
      for b in range(0, len(order), args.batch):
        idx = order[b : b + args.batch]
        T = max(len(docs[i]) for i in idx)
        ids = torch.zeros((len(idx), T), dtype=torch.long)
        mask = torch.zeros((len(idx), T), dtype=torch.long)
        for r, i in enumerate(idx):
          ids[r, : len(docs[i])] = torch.tensor(docs[i])
          mask[r, : len(docs[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        h = body(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        out[idx] = ((h * m).sum(1) / m.sum(1)).float().cpu().numpy()
    return out

  def ours():
    return embedder.embed_tokens(docs)

  # Ours sorts within chunks of 8 batches; give it all documents as one chunk so batches match torch's.
  import phi1_jax.stages.embed as embed_mod

  embed_mod.SORT_CHUNK_BATCHES = -(-len(docs) // args.batch)
  a, b = ours(), torch_embed()  # warm-up: compilation of every bucket, first-call allocations
  best = {"phi1_jax": float("inf"), "transformers": float("inf")}
  for _ in range(args.repeats):
    for name, fn in (("phi1_jax", ours), ("transformers", torch_embed)):
      t0 = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - t0)
  rate = {k: n_tokens / v for k, v in best.items()}
  print(
    f"embedding {args.docs} documents ({n_tokens} tokens, lengths {args.min_len}-{args.max_len}), batch {args.batch}, "
    f"d_model {args.d_model}, {args.n_layers} layers, jax on {jax.devices()[0].device_kind}, torch on {device}"
  )
  print(
    f"phi1_jax: {rate['phi1_jax']:,.0f} tokens/s   transformers PhiModel: {rate['transformers']:,.0f} tokens/s   "
    f"ratio {rate['phi1_jax'] / rate['transformers']:.2f}x   max |diff| {np.abs(a - b).max():.2e}"
  )


def filter_rates(args, tmp: Path):
  from phi1_jax.data.stdlib_corpus import stdlib_dir

  std = stdlib_dir()
  inputs = [str(std / name) for name in args.filter_inputs.split(",")]
  env = {**os.environ, "PYTHONPATH": str(REPO)}

  def curate(*a):
    proc = subprocess.run(
      [sys.executable, "-m", "phi1_jax.curate", *a], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode:
      sys.exit(proc.stderr[-3000:])
    return proc

  ckpt = tmp / "ckpt"
  curate("embed", "--input", *inputs, f"--checkpoint={ckpt}", f"--out={tmp / 'emb'}", "--max_len=256")
  ids = [l for f in sorted((tmp / "emb").glob("ids-*.txt")) for l in f.read_text().splitlines()]
  # Labels only so that a classifier exists: every other document counts as educational.
  (tmp / "ann.jsonl").write_text("".join(json.dumps({"id": i, "score": 4 * (k % 2)}) + "\n" for k, i in enumerate(ids)))
  curate(
    "train-classifier",
    f"--annotations={tmp / 'ann.jsonl'}",
    f"--embeddings={tmp / 'emb'}",
    f"--out={tmp / 'cls'}",
    "--trees=50",
  )
  for workers in (1, 2):
    t0 = time.perf_counter()
    curate(
      "filter",
      "--input",
      *inputs,
      f"--classifier={tmp / 'cls'}",
      f"--out={tmp / f'f{workers}'}",
      "--tasks=2",
      f"--workers={workers}",
    )
    dt = time.perf_counter() - t0
    n = json.loads((tmp / f"f{workers}" / "manifest.json").read_text())["totals"]["documents_in"]
    print(f"filter, {workers} worker(s), 2 tasks: {n} documents in {dt:.1f}s = {n / dt:.2f} documents/s")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--vocab_size", type=int, default=51200)
  ap.add_argument("--d_model", type=int, default=512)
  ap.add_argument("--n_layers", type=int, default=8)
  ap.add_argument("--n_heads", type=int, default=8)
  ap.add_argument("--docs", type=int, default=64)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--min_len", type=int, default=32)
  ap.add_argument("--max_len", type=int, default=512)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--torch_device", default="cpu", help="cpu, or cuda to compare on a GPU (jax uses its default)")
  ap.add_argument("--filter", action="store_true", help="also time `curate filter` with 1 and 2 workers")
  ap.add_argument("--filter_inputs", default="json,http,email,urllib,logging", help="stdlib folders")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    compare(args, Path(tmp))
    if args.filter:
      filter_rates(args, Path(tmp))


if __name__ == "__main__":
  main()
