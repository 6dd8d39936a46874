"""Attention: the dispatch the model calls (XLA, cuDNN or phi1_jax.model.flash's Pallas kernel),
the unfused reference of the kernel, attention over a KV cache, and the packed-document mask.

Shapes in names: B batch, L query length, S key length, N heads, H head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from phi1_jax.model import flash


def attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask_BxLxS, *, is_causal, impl, dropout_rate=0.0, key=None):
  """Scaled dot-product attention with the softmax in float32.

  Without attention dropout this is `jax.nn.dot_product_attention`, so XLA or cuDNN can fuse it.
  With dropout, causal and no mask array, "pallas" (and "auto" on GPU) runs `phi1_jax.model.flash`'s
  fused kernel; otherwise the probabilities are written out and dropped here. Both paths drop the
  same positions: the mask is a hash of (key, batch, head, query, key position).
  """
  kernel_fits = (
    mask_BxLxS is None
    and is_causal
    and flash.fits(q_BxLxNxH, k_BxSxNxH)
    and (impl == "pallas" or (impl == "auto" and jax.default_backend() == "gpu"))
  )
  if dropout_rate > 0.0 and key is not None:
    seed = flash.seed_from_key(key)
    if kernel_fits:
      return flash.flash_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, seed, dropout_rate)
    B, L, N, H = q_BxLxNxH.shape
    S = k_BxSxNxH.shape[1]
    scale = 1.0 / math.sqrt(H)
    logits_BxNxLxS = jnp.einsum("blnh,bsnh->bnls", q_BxLxNxH, k_BxSxNxH, preferred_element_type=jnp.float32) * scale
    allowed = jnp.ones((1, 1, L, S), bool)
    if is_causal:
      allowed = allowed & jnp.tril(jnp.ones((L, S), bool))[None, None]
    if mask_BxLxS is not None:
      allowed = allowed & mask_BxLxS[:, None]
    logits_BxNxLxS = jnp.where(allowed, logits_BxNxLxS, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits_BxNxLxS, axis=-1)
    keep = flash.dropout_keep(seed, B, N, L, S, dropout_rate)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0).astype(v_BxSxNxH.dtype)
    return jnp.einsum("bnls,bsnh->blnh", probs, v_BxSxNxH)
  if impl == "pallas" and kernel_fits:  # the kernel without dropout: for comparisons
    return flash.flash_attention(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, jnp.zeros((2,), jnp.uint32), 0.0)
  mask = None if mask_BxLxS is None else mask_BxLxS[:, None]
  if impl in ("auto", "pallas"):  # jax's own default (None) is always XLA, so choose here
    impl = "cudnn" if cudnn_fits(q_BxLxNxH, mask) else "xla"
  return jax.nn.dot_product_attention(
    q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, mask=mask, is_causal=is_causal, implementation=impl
  )


def cudnn_fits(q_BxLxNxH, mask) -> bool:
  """cuDNN's fused attention: a GPU, 16-bit inputs, head dim a multiple of 8 up to 128, no mask
  array (causality goes as a flag)."""
  H = q_BxLxNxH.shape[-1]
  return (
    jax.default_backend() == "gpu"
    and q_BxLxNxH.dtype in (jnp.bfloat16, jnp.float16)
    and H % 8 == 0
    and H <= 128
    and mask is None
  )


def cached_attention(q_BxLxNxH, k_BxNxSxH, v_BxNxSxH, mask_BxLxS):
  """Attention over a KV cache kept as [B, N, S, H], so that no step transposes the cache; the
  softmax in float32."""
  scale = 1.0 / math.sqrt(q_BxLxNxH.shape[-1])
  logits_BxNxLxS = (
    jnp.einsum("blnh,bnsh->bnls", q_BxLxNxH, k_BxNxSxH.astype(q_BxLxNxH.dtype), preferred_element_type=jnp.float32)
    * scale
  )
  logits_BxNxLxS = jnp.where(mask_BxLxS[:, None], logits_BxNxLxS, jnp.finfo(jnp.float32).min)
  probs_BxNxLxS = jax.nn.softmax(logits_BxNxLxS, axis=-1).astype(q_BxLxNxH.dtype)
  return jnp.einsum("bnls,bnsh->blnh", probs_BxNxLxS, v_BxNxSxH.astype(q_BxLxNxH.dtype))


def document_mask(tokens_BxL, eos_id):
  """True where query and key lie in the same packed document (an eos ends its document)."""
  doc_BxL = jnp.cumsum(tokens_BxL == eos_id, axis=1) - (tokens_BxL == eos_id)
  return doc_BxL[:, :, None] == doc_BxL[:, None, :]


def attention_reference(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, seed, rate: float):
  """Causal attention, softmax in float32, the kernel's dropout mask (unfused: for tests and for
  devices without the kernel). rate 0 is plain causal attention."""
  B, L, N, H = q_BxLxNxH.shape
  S = k_BxSxNxH.shape[1]
  logits = jnp.einsum("blnh,bsnh->bnls", q_BxLxNxH, k_BxSxNxH, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(H)
  causal = jnp.arange(L)[:, None] + (S - L) >= jnp.arange(S)[None, :]
  probs = jax.nn.softmax(jnp.where(causal, logits, flash.MASK_VALUE), axis=-1)
  if rate > 0:
    probs = jnp.where(flash.dropout_keep(seed, B, N, L, S, rate), probs / (1.0 - rate), 0.0)
  return jnp.einsum(
    "bnls,bsnh->blnh", probs.astype(v_BxSxNxH.dtype), v_BxSxNxH, preferred_element_type=jnp.float32
  ).astype(q_BxLxNxH.dtype)
