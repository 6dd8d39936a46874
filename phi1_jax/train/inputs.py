"""The trainer's inputs: the data mixture and tokenizer checked before any work, the held-out eval
batches, and the global batch of each step."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from phi1_jax import paths
from phi1_jax.cli import UserError
from phi1_jax.model import sharding


def ensure_stdlib(config) -> tuple[str, str]:
  """The "stdlib" mixture's (tokenizer dir, data dir), built on first use; touches no JAX."""
  from phi1_jax.data import stdlib_corpus

  return stdlib_corpus.ensure_stdlib_data(
    Path(config.data.cache_dir).expanduser(),
    config.data.stdlib_vocab_size,
    config.seq_len,
    max_bytes=config.data.stdlib_max_bytes,
  )


_DATA_IN_BUCKET = (
  "data path {}: ArrayRecord shards and tokenizers are read from local paths; mount the "
  "bucket (gcsfuse) and give the mount's path (docs/scaling.md: Workdirs in a bucket)"
)


def resolve_data(config, log):
  """(train sources [(dir, weight)], eval sources [(dir, weight)], tokenizer path); fails fast on
  missing paths. The eval sources are data.eval_path alone, or else the train sources."""
  from phi1_jax.data import pipeline

  mixture = config.data.mixture.strip()
  if not mixture:
    raise UserError(
      "data.mixture is empty: set --config.data.mixture=DIR[:WEIGHT],... (folders made by python -m phi1_jax.data.pack)"
    )
  if mixture == "stdlib":
    log(f"data: the embedded default (this Python's standard library), cached in {config.data.cache_dir}")
    tok_dir, data_dir = ensure_stdlib(config)
    sources = [(str(data_dir), 1.0)]
  else:
    sources = []
    for item in mixture.split(","):
      if paths.is_remote(item.strip()):
        raise UserError(_DATA_IN_BUCKET.format(item.strip()))
      path, _, weight = item.strip().rpartition(":")
      if not path:
        path, weight = weight, "1"
      try:
        sources.append((path, float(weight)))
      except ValueError:
        raise UserError(f"data.mixture item {item!r}: weight {weight!r} is not a number") from None
  manifests = []
  for path in (config.data.eval_path, config.data.tokenizer):
    if paths.is_remote(path):
      raise UserError(_DATA_IN_BUCKET.format(path))
  for path, weight in sources:
    if not Path(path).is_dir():
      raise UserError(f"data path {path} does not exist")
    if weight <= 0:
      raise UserError(f"data path {path}: weight {weight} must be positive")
    try:
      manifests.append(pipeline.read_manifest(path))
    except ValueError as e:
      raise UserError(str(e)) from None
  for (path, _), m in zip(sources, manifests):
    if m["seq_len"] != config.seq_len:
      raise UserError(f"data {path} is packed with seq_len={m['seq_len']}, config.seq_len={config.seq_len}")
  eval_sources = [(config.data.eval_path, 1.0)] if config.data.eval_path else sources
  if not Path(eval_sources[0][0]).is_dir():
    raise UserError(f"data.eval_path {config.data.eval_path} does not exist")
  tokenizer = config.data.tokenizer or manifests[0]["tokenizer"]["path"]
  if not Path(tokenizer).exists():
    raise UserError(f"tokenizer {tokenizer} does not exist")
  check_tokenizer_fits(config, manifests[0]["tokenizer"], tokenizer)
  return sources, eval_sources, tokenizer


def make_eval_sets(config, eval_sources, local_batch: int, log) -> list[tuple[str, float, list]]:
  """(name, weight, batches) of each held-out split that fills one eval batch, the others left out
  with a warning line; a UserError when none does (an eval loss over no batches would read 0)."""
  from phi1_jax.data import pipeline

  names = [Path(p).name for p, _ in eval_sources]
  if len(set(names)) < len(names):  # two folders of one name: the paths as given tell them apart
    names = [p for p, _ in eval_sources]
  sets, small = [], []
  for (path, weight), name in zip(eval_sources, names):
    try:
      batches = pipeline.make_eval_batches(
        path,
        batch_size=local_batch,
        max_batches=config.eval_batches,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
      )
    except ValueError as e:
      raise UserError(str(e)) from None
    if batches:
      sets.append((name, weight, batches))
    else:
      small.append(f"{path} has {pipeline.split_records(path, 'eval')}")
  need = f"one eval batch of batch_size={config.batch_size} records"
  if not sets:
    fix = (
      "raise --config.data.stdlib_max_bytes or lower --config.batch_size"
      if config.data.mixture.strip() == "stdlib"
      else "pack the data with a larger --eval_fraction or set --config.data.eval_path to a folder with more"
    )
    raise UserError(f"no held-out split holds {need} ({', '.join(small)}); {fix}")
  for line in small:
    log(f"warning: eval split of {line} records, fewer than {need}: left out of eval_loss")
  return sets


def check_tokenizer_fits(config, packed_tok: dict, tokenizer: str):
  """The model's vocabulary must hold the data's tokens and its eos_id must be the data's separator.

  Both stay explicit in the config rather than read from the data: they fix the model's shape,
  which checkpoints, init_from, plan and the Hugging Face export all take from the config, and a
  padded vocabulary (phi-1: 51200 entries for 50257 tokens) is a deliberate choice.
  """
  vocab, eos = packed_tok["vocab_size"], packed_tok.get("eos_id")
  if config.init_from:  # the checkpoint fixes both: the data must be in its tokens
    fix_vocab = fix_eos = f"pack the data with the tokenizer {config.init_from} was trained with"
  else:
    fix_vocab = f"for this tokenizer set --config.model.vocab_size={vocab}" + (
      f" --config.model.eos_id={eos}" if eos is not None else ""
    )
    fix_eos = f"set --config.model.eos_id={eos}"
  if vocab > config.model.vocab_size:
    raise UserError(
      f"tokenizer {tokenizer} has {vocab} tokens, model.vocab_size={config.model.vocab_size}; {fix_vocab}"
    )
  if eos is not None and eos != config.model.eos_id:
    raise UserError(
      f"tokenizer {tokenizer} separates documents with token {eos}, model.eos_id={config.model.eos_id}; {fix_eos}"
    )


def next_global_batch(train_iter, grad_accum_steps: int, local_batch: int, mesh) -> jax.Array:
  """The next step's tokens [G, B/G, L+1] as one global array, from this process's share of the batch."""
  tokens = np.asarray(next(train_iter)["tokens"], np.int32)
  tokens_GxBxL1 = tokens.reshape(grad_accum_steps, local_batch // grad_accum_steps, tokens.shape[-1])
  return sharding.global_batch(tokens_GxBxL1, mesh, leading_dims=1)
