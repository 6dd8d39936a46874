"""Document embeddings from a phi1_jax or Hugging Face Phi checkpoint.

An embedding is the masked mean (`pooling="mean"`) of the final-LayerNorm hidden states over the
first `max_len` tokens of a document, or the hidden state of its last token (`pooling="last"`),
computed in float32. Documents are sorted by length within a chunk and batched; each batch is
padded on the right to a length bucket (powers of two up to max_len), so a handful of programs is
compiled; the causal mask means right padding never changes a real token's state. The batch is
split across every device present (data parallel), parameters replicated.

`Embedder.identity` names exactly what produced the vectors (checkpoint, a digest of its
parameters, tokenizer digest, max_len, pooling); the classifier keeps it, and the filter refuses
an embedder with another fingerprint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from phi1_jax import paths
from phi1_jax.data.tokenizer import file_sha256, load_tokenizer
from phi1_jax.inference import sampler as sample
from phi1_jax.model import checkpoint as checkpoint_lib
from phi1_jax.model.phi import flatten_params, model_from_params

POOLINGS = ("mean", "last")
SORT_CHUNK_BATCHES = 8  # documents sorted by length within 8 batches at a time


def params_digest(params: dict) -> str:
  """sha256 over every parameter's path, shape, dtype and bytes (float32), in path order."""
  h = hashlib.sha256()
  for path, x in sorted(flatten_params(params).items()):
    x = np.ascontiguousarray(np.asarray(x, np.float32))
    h.update(f"{path}\0{x.shape}\0".encode())
    h.update(x.tobytes())
  return h.hexdigest()


@functools.partial(jax.jit, static_argnames=("graphdef", "pooling"))
def _pool(graphdef, state, tokens_BxL, lengths_B, *, pooling):
  model = nnx.merge(graphdef, state)
  h_BxLxD, _ = model.hidden_states(tokens_BxL)
  h_BxLxD = h_BxLxD.astype(jnp.float32)
  if pooling == "last":
    return jnp.take_along_axis(h_BxLxD, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
  mask_BxL = jnp.arange(tokens_BxL.shape[1])[None, :] < lengths_B[:, None]
  total_BxD = jnp.einsum("bld,bl->bd", h_BxLxD, mask_BxL.astype(jnp.float32))
  return total_BxD / jnp.maximum(lengths_B, 1)[:, None].astype(jnp.float32)


class Embedder:
  """Loads a checkpoint and its tokenizer once; `embed(texts)` gives float32 [n, D]."""

  def __init__(self, checkpoint, tokenizer=None, *, max_len: int = 512, pooling: str = "mean", batch_size: int = 16):
    if pooling not in POOLINGS:
      raise ValueError(f"--pooling={pooling!r} is not one of {POOLINGS}")
    if max_len < 1 or batch_size < 1:
      raise ValueError(f"--max_len={max_len} and --batch_size={batch_size} must be positive")
    found = checkpoint_lib.resolve(checkpoint)
    tok_path = found.tokenizer_file(tokenizer)
    cfg, params = found.load_params()
    if max_len > cfg.max_seq_len:
      raise ValueError(f"--max_len={max_len} exceeds the model's max_seq_len={cfg.max_seq_len}")
    self.tokenizer = load_tokenizer(tok_path)
    if self.tokenizer.vocab_size > cfg.vocab_size:
      raise ValueError(
        f"tokenizer {tok_path} has {self.tokenizer.vocab_size} ids, more than the model's vocab_size={cfg.vocab_size}"
      )
    # Inference: no dropout, float32 compute, no packed-document mask, layers under scan.
    cfg = dataclasses.replace(
      cfg,
      dtype="float32",
      embd_dropout=0.0,
      attn_dropout=0.0,
      resid_dropout=0.0,
      doc_mask=False,
      remat="none",
      attention_impl="xla",
    )
    self.cfg, self.max_len, self.pooling, self.batch_size = cfg, max_len, pooling, batch_size
    self.identity = {
      "checkpoint": str(found.path),
      "params_sha256": params_digest(params),
      "tokenizer": str(paths.absolute(tok_path)),
      "tokenizer_sha256": file_sha256(paths.local_copy(tok_path)),
      "max_len": max_len,
      "pooling": pooling,
      "dim": cfg.d_model,
      "model": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size},
    }
    self.mesh = jax.make_mesh((len(jax.devices()),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    model = model_from_params(cfg, params)
    self._graphdef, state = nnx.split(model)
    self._state = jax.device_put(state, NamedSharding(self.mesh, P()))
    self._buckets = sample.pow2_buckets(max_len)

  @property
  def fingerprint(self) -> str:
    """Everything that decides the vectors, not where the files lie."""
    same = {k: v for k, v in self.identity.items() if k not in ("checkpoint", "tokenizer")}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """The first max_len token ids of each text (at least one: an empty text embeds token 0)."""
    return [ids[: self.max_len] or [0] for ids in self.tokenizer.encode_batch(list(texts))]

  def embed_tokens(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
    """float32 [n, D]: documents sorted by length in chunks, batched, padded to a bucket."""
    out = np.zeros((len(ids), self.cfg.d_model), np.float32)
    chunk = self.batch_size * SORT_CHUNK_BATCHES
    n_dev = len(jax.devices())
    rows = -(-self.batch_size // n_dev) * n_dev  # a whole number of rows per device
    for start in range(0, len(ids), chunk):
      order = sorted(range(start, min(start + chunk, len(ids))), key=lambda i: len(ids[i]))
      for b in range(0, len(order), self.batch_size):
        idx = order[b : b + self.batch_size]
        longest = max(len(ids[i]) for i in idx)
        L = next(n for n in self._buckets if n >= longest)
        tokens_BxL = np.zeros((rows, L), np.int32)
        lengths_B = np.ones((rows,), np.int32)  # padding rows embed one token 0; dropped below
        for r, i in enumerate(idx):
          tokens_BxL[r, : len(ids[i])] = ids[i]
          lengths_B[r] = len(ids[i])
        vecs = _pool(
          self._graphdef,
          self._state,
          jax.device_put(tokens_BxL, self._batch_sharding),
          jax.device_put(lengths_B, self._batch_sharding),
          pooling=self.pooling,
        )
        out[idx] = np.asarray(vecs)[: len(idx)]
    return out

  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """float32 [len(texts), D]."""
    return self.embed_tokens(self.tokenize(texts))
