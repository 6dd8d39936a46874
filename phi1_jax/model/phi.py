"""Phi-1 in Flax NNX.

Block: `y = LN(x); x + Attn(y) + MLP(y)` (one LayerNorm, attention and MLP in parallel),
partial rotary embedding (half-split), biased projections, GELU(tanh), untied biased lm_head.
Computes what `transformers.PhiForCausalLM` computes (tests/test_parity.py checks it).

Layer parameters are stacked along a leading `layers` axis and the blocks run under
`jax.lax.scan`, so compile time does not grow with depth. Every parameter carries logical axis
names in its `logical_axes` metadata; `phi1_jax.model.sharding` maps them to mesh axes by rules.

Shapes in names: B batch, L query length, S key length, D d_model, N heads, H head dim,
F mlp dim, V vocab, Y layers.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from phi1_jax.model.attention import attention, cached_attention, document_mask
from phi1_jax.model.config import ModelConfig
from phi1_jax.model.sharding import constrain

REMAT_POLICIES = {  # ModelConfig.remat's names (model.config.REMAT_NAMES) -> jax's policies
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(key, shape, axes, std):
  """A float32 parameter with its logical axis names; std 0 means zeros, None means ones."""
  if std is None:
    value = jnp.ones(shape, jnp.float32)
  elif std == 0:
    value = jnp.zeros(shape, jnp.float32)
  else:
    value = std * jax.random.normal(key, shape, jnp.float32)
  return nnx.Param(value, logical_axes=axes)


class StackedBlocks(nnx.Module):
  """All transformer blocks, parameters stacked along the leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, key):
    Y, D, N, H, F = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_dim
    k = iter(jax.random.split(key, 6))
    s = cfg.init_std
    self.ln_scale = _param(None, (Y, D), ("layers", "embed"), None)
    self.ln_bias = _param(None, (Y, D), ("layers", "embed"), 0)
    for name in ("q", "k", "v"):
      setattr(self, f"{name}_kernel", _param(next(k), (Y, D, N, H), ("layers", "embed", "heads", "head_dim"), s))
      setattr(self, f"{name}_bias", _param(None, (Y, N, H), ("layers", "heads", "head_dim"), 0))
    self.o_kernel = _param(next(k), (Y, N, H, D), ("layers", "heads", "head_dim", "embed"), s)
    self.o_bias = _param(None, (Y, D), ("layers", "embed"), 0)
    self.fc1_kernel = _param(next(k), (Y, D, F), ("layers", "embed", "mlp"), s)
    self.fc1_bias = _param(None, (Y, F), ("layers", "mlp"), 0)
    self.fc2_kernel = _param(next(k), (Y, F, D), ("layers", "mlp", "embed"), s)
    self.fc2_bias = _param(None, (Y, D), ("layers", "embed"), 0)


def layer_norm(x, scale, bias, eps):
  """LayerNorm computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias
  return y.astype(x.dtype)


def rotary(x_BxLxNxH, positions_BxL, rotary_dim: int, theta: float):
  """Rotates the first `rotary_dim` dims of each head (half-split, as GPT-NeoX/Phi); the rest pass."""
  if rotary_dim == 0:
    return x_BxLxNxH
  inv_freq_R = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  angles_BxLxR = positions_BxL[..., None].astype(jnp.float32) * inv_freq_R
  cos = jnp.cos(angles_BxLxR)[:, :, None, :]
  sin = jnp.sin(angles_BxLxR)[:, :, None, :]
  x_rot, x_pass = x_BxLxNxH[..., :rotary_dim], x_BxLxNxH[..., rotary_dim:]
  x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return jnp.concatenate([rotated.astype(x_BxLxNxH.dtype), x_pass], axis=-1)


def _dropout(x, rate, key):
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _block(cfg: ModelConfig, p: dict, x_BxLxD, positions_BxL, mask_BxLxS, key, cache_kv=None, cache_index=None):
  """One Phi block on one layer's parameters; returns the new residual stream (and cache)."""
  dtype = jnp.dtype(cfg.dtype)
  keys = (None,) * 3 if key is None else tuple(jax.random.split(key, 3))
  x_BxLxD = constrain(x_BxLxD, ("batch", "length", "embed"))
  y_BxLxD = layer_norm(x_BxLxD, p["ln_scale"], p["ln_bias"], cfg.ln_eps)

  # Projections as plain 2-D matmuls over merged (N, H): as einsums with a [D, N, H] operand,
  # XLA:CPU copies the weights into another layout on every call (every decoded token).
  B, L, D = x_BxLxD.shape
  N, H = cfg.n_heads, cfg.head_dim

  def proj(name):
    out = (y_BxLxD @ p[f"{name}_kernel"].reshape(D, N * H).astype(dtype)).reshape(B, L, N, H)
    return constrain(out + p[f"{name}_bias"].astype(dtype), ("batch", "length", "heads", "head_dim"))

  q_BxLxNxH = rotary(proj("q"), positions_BxL, cfg.rotary_dim, cfg.rope_theta)
  k_BxLxNxH = rotary(proj("k"), positions_BxL, cfg.rotary_dim, cfg.rope_theta)
  v_BxLxNxH = proj("v")
  new_cache = None
  if cache_kv is None:
    o_BxLxNxH = attention(
      q_BxLxNxH,
      k_BxLxNxH,
      v_BxLxNxH,
      mask_BxLxS,
      is_causal=mask_BxLxS is None,
      impl=cfg.attention_impl,
      dropout_rate=cfg.attn_dropout,
      key=keys[0],
    )
  else:  # write this chunk into the cache at cache_index; the caller's mask covers causality

    def write(cache_BxNxSxH, new_BxLxNxH):
      new_BxNxLxH = new_BxLxNxH.transpose(0, 2, 1, 3).astype(cache_BxNxSxH.dtype)
      return jax.lax.dynamic_update_slice_in_dim(cache_BxNxSxH, new_BxNxLxH, cache_index, 2)

    new_cache = (write(cache_kv[0], k_BxLxNxH), write(cache_kv[1], v_BxLxNxH))
    o_BxLxNxH = cached_attention(q_BxLxNxH, *new_cache, mask_BxLxS)
  attn_BxLxD = o_BxLxNxH.reshape(B, L, N * H) @ p["o_kernel"].reshape(N * H, D).astype(dtype) + p["o_bias"].astype(
    dtype
  )

  h_BxLxF = jnp.einsum("bld,df->blf", y_BxLxD, p["fc1_kernel"].astype(dtype)) + p["fc1_bias"].astype(dtype)
  h_BxLxF = constrain(jax.nn.gelu(h_BxLxF, approximate=True), ("batch", "length", "mlp"))
  mlp_BxLxD = jnp.einsum("blf,fd->bld", h_BxLxF, p["fc2_kernel"].astype(dtype)) + p["fc2_bias"].astype(dtype)

  x_BxLxD = x_BxLxD + _dropout(attn_BxLxD, cfg.resid_dropout, keys[1]) + _dropout(mlp_BxLxD, cfg.resid_dropout, keys[2])
  return constrain(x_BxLxD, ("batch", "length", "embed")), new_cache


class Phi(nnx.Module):
  """Phi-1 causal language model."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    V, D, s = cfg.vocab_size, cfg.d_model, cfg.init_std
    self.embed = _param(rngs.params(), (V, D), ("vocab", "embed"), s)
    self.blocks = StackedBlocks(cfg, rngs.params())
    self.final_ln_scale = _param(None, (D,), ("embed",), None)
    self.final_ln_bias = _param(None, (D,), ("embed",), 0)
    self.lm_head_kernel = _param(rngs.params(), (D, V), ("embed", "vocab"), s)
    self.lm_head_bias = _param(None, (V,), ("vocab",), 0)

  def hidden_states(
    self,
    tokens_BxL,
    *,
    positions_BxL=None,
    mask_BxLxS=None,
    dropout_key=None,
    cache=None,
    cache_index=None,
    layers=None,
  ):
    """Final-LayerNorm hidden states [B, L, D] in the compute dtype (and the updated cache).

    Without a cache the layers run under `jax.lax.scan` on the stacked parameters. With one
    (sampling), `layers` is `unstacked_layers()` and `cache` is `init_cache()`: a list of
    per-layer {"k", "v"} [B, N, S, H]; this chunk is written at `cache_index`, and the caller's
    `mask_BxLxS` says which cache slots each query may see.
    """
    cfg = self.cfg
    dtype = jnp.dtype(cfg.dtype)
    B, L = tokens_BxL.shape
    if positions_BxL is None:
      positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))
    if cfg.doc_mask and cache is None:
      doc = document_mask(tokens_BxL, cfg.eos_id) & jnp.tril(jnp.ones((L, L), bool))
      mask_BxLxS = doc if mask_BxLxS is None else mask_BxLxS & doc
    # The table gathered over fsdp before the lookup (as FSDP does for every weight): looking up
    # in a table split along D would give rows split along D, which XLA can only reshard to
    # batch-split rows by replicating them on every device.
    embed_VxD = constrain(self.embed[...], ("vocab", "embed"))
    x_BxLxD = constrain(jnp.take(embed_VxD, tokens_BxL, axis=0).astype(dtype), ("batch", "length", "embed"))
    if dropout_key is not None:
      dropout_key, embd_key = jax.random.split(dropout_key)
      x_BxLxD = _dropout(x_BxLxD, cfg.embd_dropout, embd_key)
    new_cache = None
    if cache is not None:
      # A Python loop over separate per-layer arrays: slicing a stacked array inside the step
      # would copy every layer's weights and cache on each token (XLA:CPU materialises slices).
      new_cache = []
      for p, kv in zip(layers, cache):
        x_BxLxD, (k, v) = _block(cfg, p, x_BxLxD, positions_BxL, mask_BxLxS, None, (kv["k"], kv["v"]), cache_index)
        new_cache.append({"k": k, "v": v})
    else:
      layer_params = nnx.to_pure_dict(nnx.state(self.blocks, nnx.Param))
      layer_keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.n_layers)

      def body(x, xs):
        p, key = xs
        return _block(cfg, p, x, positions_BxL, mask_BxLxS, key)[0], None

      if REMAT_POLICIES[cfg.remat] is not None:
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat])
      x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, (layer_params, layer_keys), unroll=not cfg.scan_layers)
    h_BxLxD = layer_norm(x_BxLxD, self.final_ln_scale[...], self.final_ln_bias[...], cfg.ln_eps)
    return h_BxLxD, new_cache

  def logits(self, h_BxLxD):
    """lm_head in float32 accumulation: logits [B, L, V] float32."""
    dtype = jnp.dtype(self.cfg.dtype)
    logits = jnp.einsum(
      "bld,dv->blv", h_BxLxD, self.lm_head_kernel[...].astype(dtype), preferred_element_type=jnp.float32
    )
    return logits + self.lm_head_bias[...]

  def __call__(self, tokens_BxL, *, positions_BxL=None, dropout_key=None, return_hidden=False):
    """Logits [B, L, V] float32; with return_hidden also the final hidden states [B, L, D].

    dropout_key=None is the deterministic (evaluation) mode.
    """
    h_BxLxD, _ = self.hidden_states(tokens_BxL, positions_BxL=positions_BxL, dropout_key=dropout_key)
    logits_BxLxV = self.logits(h_BxLxD)
    return (logits_BxLxV, h_BxLxD) if return_hidden else logits_BxLxV

  def unstacked_layers(self) -> list[dict[str, jax.Array]]:
    """One dict of parameter arrays per layer, for `hidden_states` with a cache. Kernels and
    biases are already in the compute dtype (the block casts them to it anyway), so a bfloat16
    model's decode step reads half the bytes; LayerNorm parameters stay float32."""
    return _unstack(nnx.to_pure_dict(nnx.state(self.blocks, nnx.Param)), self.cfg.n_layers, self.cfg.dtype)

  def init_cache(self, batch_size: int, max_len: int, dtype=None) -> list[dict[str, jax.Array]]:
    """Per layer {"k", "v"} [B, N, S, H], zeros."""
    cfg = self.cfg
    shape = (batch_size, cfg.n_heads, max_len, cfg.head_dim)
    dtype = dtype or jnp.dtype(cfg.dtype)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.n_layers)]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _unstack(stacked: dict, n_layers: int, dtype: str) -> list[dict]:
  """One compiled program slices all layers (eager slicing dispatches once per array)."""
  cast = {k: (jnp.float32 if k.startswith("ln_") else jnp.dtype(dtype)) for k in stacked}
  return [{k: a[y].astype(cast[k]) for k, a in stacked.items()} for y in range(n_layers)]


def abstract_model(cfg: ModelConfig) -> Phi:
  """The model with shapes only (no memory allocated)."""
  return nnx.eval_shape(lambda: Phi(cfg, rngs=nnx.Rngs(0)))


def count_params(cfg: ModelConfig) -> int:
  """Parameter count, computed abstractly."""
  state = nnx.state(abstract_model(cfg), nnx.Param)
  return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


# ----------------------------------------------------------------------------- parameters as a pure dict


def flatten_params(tree: dict, prefix: str = "") -> dict:
  """A nested dict of arrays as {"a/b/c": array}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten_params(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def param_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """Every parameter as a '/'-joined path, with its shape (computed abstractly)."""
  state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  return {path: tuple(x.shape) for path, x in flatten_params(state).items()}


def check_shapes(expected: dict[str, tuple], found: dict[str, tuple], where: str) -> None:
  """Raises a one-line ValueError on the first missing, extra or wrongly shaped tensor."""
  problems = []
  for name in sorted(set(expected) | set(found)):
    want, got = expected.get(name), found.get(name)
    if want is None:
      problems.append(f"{name}: unexpected tensor (expected shape none, found {got})")
    elif got is None:
      problems.append(f"{name}: missing tensor (expected shape {want}, found none)")
    elif tuple(want) != tuple(got):
      problems.append(f"{name}: wrong shape (expected {tuple(want)}, found {tuple(got)})")
  if problems:
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    raise ValueError(f"{where}: {problems[0]}{more}")


def model_from_params(cfg: ModelConfig, pure_params: dict) -> Phi:
  """A ready-to-call Phi holding `pure_params` (shapes checked; no random init is computed)."""
  check_shapes(param_shapes(cfg), {k: jnp.shape(v) for k, v in flatten_params(pure_params).items()}, "phi1_jax params")
  model = abstract_model(cfg)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, pure_params))
  nnx.update(model, state)
  return model
