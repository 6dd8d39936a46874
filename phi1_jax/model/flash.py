"""Causal flash attention with attention dropout inside the kernel (Pallas, Triton on GPU).

The paper trains with attention dropout 0.1. Dropout on the probabilities keeps XLA's attention
unfused ([B, N, L, S] scores and probabilities written out per layer) and cuDNN's fused kernel
takes its dropout seed as a compile-time int (`jax._src.cudnn.fused_attention_stablehlo`
puts `seed` in the custom call's backend config), so every step would drop the same positions or
recompile. Here the mask is a hash of (seed, batch, head, query position, key position):

    keep[b, n, i, j] = fmix32((i * S + j) * GOLDEN ^ plane_key(seed, b, n)) >= rate * 2**32

with murmur3's 32-bit finalizer. It depends on no tile size, so the forward and the backward
kernels (different tilings) regenerate the same mask, and `dropout_keep` materialises it for the
unfused path, which therefore drops exactly what the kernel drops. The seed comes from the
training step's dropout key, so the same seed and step give the same mask (exact resume).

    flash_attention(q, k, v, seed, rate=0.1)   # q, k, v [B, L, N, H]; seed uint32[2]
    phi1_jax.model.attention.attention_reference(q, k, v, seed, rate)   # the same, unfused (XLA)

`interpret=None` runs the kernel compiled on GPU and in Pallas' interpreter elsewhere (tests).
Tiles: `Blocks`; the environment variable PHI1_FLASH_BLOCKS="128,64,64,64,4,4,2" (the fields in
order) replaces the defaults, so a benchmark's best tiling can be tried in a training run.
`fits()` says where the kernel applies (causal, no mask array, head dim a power of 2 from 16 to
128, lengths divisible by the blocks); phi1_jax.model.attention.attention falls back to the unfused path elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

try:  # Pallas ships with jax; guard so that a jax without it still imports the model
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plgpu
except ImportError:  # pragma: no cover
  pl = plgpu = None

LOG2E = math.log2(math.e)
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: exp2 of (mask - max) is 0, never NaN
GOLDEN = 0x9E3779B1


@dataclasses.dataclass(frozen=True)
class Blocks:
  """Tile sizes. Forward: block_q query rows per program, block_k keys per loop step. Backward:
  `bwd_outer` keys (for dK, dV) or queries (for dQ) per program, `bwd_inner` per loop step."""

  block_q: int = 128
  block_k: int = 64
  bwd_outer: int = 64
  bwd_inner: int = 64
  num_warps_fwd: int = 4
  num_warps_bwd: int = 4
  num_stages: int = 2

  @classmethod
  def parse(cls, spec: str) -> "Blocks":
    """From "128,64,64,64,4,4,2" (the fields in order; fewer keep the rest's defaults)."""
    try:
      return cls(*[int(x) for x in spec.split(",")])
    except (TypeError, ValueError):
      raise ValueError(
        f"tile spec {spec!r}: give up to {len(dataclasses.fields(cls))} comma-separated ints "
        f"({', '.join(f.name for f in dataclasses.fields(cls))})"
      ) from None

  def spec(self) -> str:
    return ",".join(str(getattr(self, f.name)) for f in dataclasses.fields(self))


DEFAULT_BLOCKS = Blocks.parse(os.environ["PHI1_FLASH_BLOCKS"]) if os.environ.get("PHI1_FLASH_BLOCKS") else Blocks()


# --- the counter-based mask -------------------------------------------------------------------


def _fmix32(h):
  """murmur3's finalizer: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _plane_key(seed0, seed1, plane):
  """One key per (batch, head) plane, from the two seed words."""
  return _fmix32(seed0 ^ _fmix32(seed1 ^ (plane.astype(jnp.uint32) * jnp.uint32(GOLDEN))))


def _threshold(rate: float) -> int:
  return min(int(round(rate * 2.0**32)), 2**32 - 1)


def _keep(plane_key, q_pos, k_pos, kv_len: int, rate: float):
  """True where the probability at (q_pos, k_pos) is kept (broadcasting int32 positions).
  (q S + k) GOLDEN mod 2^32 is formed as q (S GOLDEN) + k GOLDEN: the products per row and per
  column, one add per element."""
  row = q_pos.astype(jnp.uint32) * jnp.uint32(kv_len * GOLDEN % 2**32)
  col = k_pos.astype(jnp.uint32) * jnp.uint32(GOLDEN)
  return _fmix32((row + col) ^ plane_key) >= jnp.uint32(_threshold(rate))


def seed_from_key(key) -> jax.Array:
  """Two uint32 seed words from a jax PRNG key (typed or raw)."""
  return jax.random.bits(key, (2,), jnp.uint32)


def dropout_keep(seed, B: int, N: int, L: int, S: int, rate: float, batch_offset=0) -> jax.Array:
  """The kernel's keep mask materialised, bool [B, N, L, S] (the kernel has S = L; with S > L query
  i sits at position i + S - L); `batch_offset` is the global index of row 0."""
  b = jnp.arange(B, dtype=jnp.int32)[:, None] + batch_offset
  plane = b * N + jnp.arange(N, dtype=jnp.int32)[None, :]
  key_BxN = _plane_key(seed[0], seed[1], plane)
  q_pos = jnp.arange(L, dtype=jnp.int32)[:, None] + (S - L)
  k_pos = jnp.arange(S, dtype=jnp.int32)[None, :]
  return _keep(key_BxN[:, :, None, None], q_pos, k_pos, S, rate)


# --- the kernels --------------------------------------------------------------------------------


def _kernel_plane_key(seed_ref, b, n, n_heads):
  """The plane key of batch row b, head n of this shard: seed words in seed_ref[0:2], the shard's
  first global batch row and head in seed_ref[2:4], n_heads the global head count."""
  plane = (b + seed_ref[2].astype(jnp.int32)) * n_heads + n + seed_ref[3].astype(jnp.int32)
  return _plane_key(seed_ref[0], seed_ref[1], plane)


def _fwd_kernel(seed_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, scale, rate, block_q, block_k, n_heads):
  i, b, n = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  S = k_ref.shape[0]  # q_ref holds this program's block, k_ref and v_ref every key
  q = q_ref[...]
  q_pos = i * block_q + jnp.arange(block_q, dtype=jnp.int32)[:, None]
  pk = _kernel_plane_key(seed_ref, b, n, n_heads) if rate > 0 else None

  def body(j, carry, masked):
    o, m, l = carry
    ks = pl.ds(j * block_k, block_k)
    k, v = k_ref[ks, :], v_ref[ks, :]
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    s = s * (scale * LOG2E)  # base-2 exponent: exp(x) = exp2(x log2 e)
    k_pos = j * block_k + jnp.arange(block_k, dtype=jnp.int32)[None, :]
    if masked:  # only blocks crossing the diagonal
      s = jnp.where(q_pos >= k_pos, s, MASK_VALUE)
    m_new = jnp.maximum(m, s.max(axis=-1))
    corr = jnp.exp2(m - m_new)
    p = jnp.exp2(s - m_new[:, None])
    l = l * corr + p.sum(axis=-1)  # the normaliser counts every key, dropped or not
    if rate > 0:
      p = jnp.where(_keep(pk, q_pos, k_pos, S, rate), p, 0.0)
    o = o * corr[:, None] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return o, m_new, l

  H = q_ref.shape[-1]
  o = jnp.zeros((block_q, H), jnp.float32)
  m = jnp.full((block_q,), -jnp.inf, jnp.float32)
  l = jnp.zeros((block_q,), jnp.float32)
  # Key blocks wholly at or before the block's first query need no causal mask; then the ones
  # crossing the diagonal, up to the block's last query.
  full = jax.lax.div(i * block_q + 1, block_k)
  upper = jax.lax.div((i + 1) * block_q + block_k - 1, block_k)
  o, m, l = jax.lax.fori_loop(0, full, functools.partial(body, masked=False), (o, m, l))
  o, m, l = jax.lax.fori_loop(full, upper, functools.partial(body, masked=True), (o, m, l))
  o_ref[...] = (o * (1.0 / (1.0 - rate) / l)[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log2(l)


def _bwd_kernel(
  seed_ref,
  q_ref,
  k_ref,
  v_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  dk_ref,
  dv_ref,
  *,
  scale,
  rate,
  outer,
  inner,
  n_heads,
):
  """dK, dV for key block t, then dQ for query block t (one program does both)."""
  b, n, t = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  L, S = q_ref.shape[0], k_ref.shape[0]
  inv_keep = 1.0 / (1.0 - rate)
  pk = _kernel_plane_key(seed_ref, b, n, n_heads) if rate > 0 else None

  def ds_and_p(q, k, v, do, lse, delta, q_pos, k_pos, masked):
    """dS (scaled by the softmax scale) and the kept, rescaled probabilities of one tile."""
    s = jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    s = s * (scale * LOG2E)
    if masked:
      s = jnp.where(q_pos >= k_pos, s, MASK_VALUE)
    p = jnp.exp2(s - lse[:, None])
    dpd = jax.lax.dot_general(do, v, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if rate > 0:
      keep = _keep(pk, q_pos, k_pos, S, rate)
      pd = jnp.where(keep, p * inv_keep, 0.0)
      dp = jnp.where(keep, dpd * inv_keep, 0.0)
    else:
      pd, dp = p, dpd
    ds = p * (dp - delta[:, None]) * scale
    return ds, pd

  # dK, dV of keys [t*outer, (t+1)*outer): queries from the first that sees them to the end.
  ks = pl.ds(t * outer, outer)
  k, v = k_ref[ks, :], v_ref[ks, :]
  k_pos = t * outer + jnp.arange(outer, dtype=jnp.int32)[None, :]

  def dkdv_body(j, carry, masked):
    dk, dv = carry
    qs = pl.ds(j * inner, inner)
    q, do = q_ref[qs, :], do_ref[qs, :]
    q_pos = j * inner + jnp.arange(inner, dtype=jnp.int32)[:, None]
    ds, pd = ds_and_p(q, k, v, do, lse_ref[qs], delta_ref[qs], q_pos, k_pos, masked)
    dv = dv + jax.lax.dot_general(pd.astype(do.dtype), do, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    dk = dk + jax.lax.dot_general(ds.astype(q.dtype), q, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dk, dv

  H = q_ref.shape[-1]
  zeros = jnp.zeros((outer, H), jnp.float32)
  # Query blocks crossing the diagonal (masked), then those wholly at or after the block's last key.
  first = jax.lax.div(t * outer, inner)
  full = jnp.minimum(jax.lax.div((t + 1) * outer + inner - 2, inner), L // inner)
  dk, dv = jax.lax.fori_loop(first, full, functools.partial(dkdv_body, masked=True), (zeros, zeros))
  dk, dv = jax.lax.fori_loop(full, L // inner, functools.partial(dkdv_body, masked=False), (dk, dv))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)

  # dQ of queries [t*outer, (t+1)*outer): keys up to the block's last row.
  qs = pl.ds(t * outer, outer)
  q, do, lse, delta = q_ref[qs, :], do_ref[qs, :], lse_ref[qs], delta_ref[qs]
  q_pos = t * outer + jnp.arange(outer, dtype=jnp.int32)[:, None]

  def dq_body(j, dq, masked):
    kss = pl.ds(j * inner, inner)
    kk, vv = k_ref[kss, :], v_ref[kss, :]
    kp = j * inner + jnp.arange(inner, dtype=jnp.int32)[None, :]
    ds, _ = ds_and_p(q, kk, vv, do, lse, delta, q_pos, kp, masked)
    return dq + jnp.dot(ds.astype(kk.dtype), kk, preferred_element_type=jnp.float32)

  full = jax.lax.div(t * outer + 1, inner)
  upper = jax.lax.div((t + 1) * outer + inner - 1, inner)
  dq = jax.lax.fori_loop(0, full, functools.partial(dq_body, masked=False), jnp.zeros((outer, H), jnp.float32))
  dq = jax.lax.fori_loop(full, upper, functools.partial(dq_body, masked=True), dq)
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _interpret(interpret):
  return jax.default_backend() != "gpu" if interpret is None else interpret


def _params(num_warps, num_stages):
  params = getattr(plgpu, "CompilerParams", None) or plgpu.TritonCompilerParams  # the older name
  return params(num_warps=num_warps, num_stages=num_stages)


def _forward(q, k, v, seed4, rate, blocks, interpret, heads_total):
  B, L, N, H = q.shape
  S = k.shape[1]
  bq, bk = min(blocks.block_q, L), min(blocks.block_k, S)
  kernel = functools.partial(
    _fwd_kernel, scale=1.0 / math.sqrt(H), rate=rate, block_q=bq, block_k=bk, n_heads=heads_total or N
  )
  o, lse = pl.pallas_call(
    kernel,
    grid=(L // bq, B, N),
    in_specs=[
      pl.BlockSpec((4,), lambda i, b, n: (0,)),
      pl.BlockSpec((None, bq, None, H), lambda i, b, n: (b, i, n, 0)),
      pl.BlockSpec((None, S, None, H), lambda i, b, n: (b, 0, n, 0)),
      pl.BlockSpec((None, S, None, H), lambda i, b, n: (b, 0, n, 0)),
    ],
    out_specs=[
      pl.BlockSpec((None, bq, None, H), lambda i, b, n: (b, i, n, 0)),
      pl.BlockSpec((None, None, bq), lambda i, b, n: (b, n, i)),
    ],
    out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((B, N, L), jnp.float32)],
    compiler_params=_params(blocks.num_warps_fwd, blocks.num_stages),
    interpret=_interpret(interpret),
    name="flash_dropout_fwd",
  )(seed4, q, k, v)
  return o, lse


def _backward(q, k, v, o, lse, do, seed4, rate, blocks, interpret, heads_total):
  B, L, N, H = q.shape
  S = k.shape[1]
  outer, inner = min(blocks.bwd_outer, L), min(blocks.bwd_inner, L)
  # delta_i = sum_j P_ij dP_ij = rowsum(dO * O): dropout does not change it (O holds the mask).
  delta = jnp.einsum("blnh,blnh->bnl", do.astype(jnp.float32), o.astype(jnp.float32))
  kernel = functools.partial(
    _bwd_kernel, scale=1.0 / math.sqrt(H), rate=rate, outer=outer, inner=inner, n_heads=heads_total or N
  )
  whole = lambda n_rows: pl.BlockSpec((None, n_rows, None, H), lambda b, n, t: (b, 0, n, 0))
  rows = pl.BlockSpec((None, None, L), lambda b, n, t: (b, n, 0))
  tile = pl.BlockSpec((None, outer, None, H), lambda b, n, t: (b, t, n, 0))
  dq, dk, dv = pl.pallas_call(
    kernel,
    grid=(B, N, L // outer),
    in_specs=[pl.BlockSpec((4,), lambda b, n, t: (0,)), whole(L), whole(S), whole(S), whole(L), rows, rows],
    out_specs=[tile, tile, tile],
    out_shape=[
      jax.ShapeDtypeStruct(q.shape, q.dtype),
      jax.ShapeDtypeStruct(k.shape, k.dtype),
      jax.ShapeDtypeStruct(v.shape, v.dtype),
    ],
    compiler_params=_params(blocks.num_warps_bwd, blocks.num_stages),
    interpret=_interpret(interpret),
    name="flash_dropout_bwd",
  )(seed4, q, k, v, do, lse, delta)
  return dq, dk, dv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _flash(q, k, v, seed4, rate, blocks, interpret, heads_total=None):
  return _forward(q, k, v, seed4, rate, blocks, interpret, heads_total)[0]


def _flash_fwd(q, k, v, seed4, rate, blocks, interpret, heads_total=None):
  o, lse = _forward(q, k, v, seed4, rate, blocks, interpret, heads_total)
  return o, (q, k, v, seed4, o, lse)


def _flash_bwd(rate, blocks, interpret, heads_total, res, do):
  q, k, v, seed4, o, lse = res
  dq, dk, dv = _backward(q, k, v, o, lse, do, seed4, rate, blocks, interpret, heads_total)
  return dq, dk, dv, np.zeros(seed4.shape, jax.dtypes.float0)


_flash.defvjp(_flash_fwd, _flash_bwd)


def fits(q_BxLxNxH, k_BxSxNxH, blocks: Blocks = DEFAULT_BLOCKS) -> bool:
  """Whether the kernel applies: Pallas present, self-attention lengths divisible by the blocks,
  head dim a power of 2 in [16, 128] (Triton's tiles)."""
  if pl is None:
    return False
  L, H = q_BxLxNxH.shape[1], q_BxLxNxH.shape[-1]
  if k_BxSxNxH.shape[1] != L or H & (H - 1) or not 16 <= H <= 128:
    return False
  return all(
    L % min(b, L) == 0 and min(b, L) >= 16 for b in (blocks.block_q, blocks.block_k, blocks.bwd_outer, blocks.bwd_inner)
  )


def flash_attention(
  q_BxLxNxH,
  k_BxSxNxH,
  v_BxSxNxH,
  seed,
  rate: float = 0.0,
  *,
  blocks: Blocks = DEFAULT_BLOCKS,
  interpret: bool | None = None,
):
  """Causal attention of [B, L, N, H] q, k, v with dropout `rate` on the probabilities, the mask
  drawn from `seed` (uint32[2], e.g. `seed_from_key(key)`). Differentiable in q, k, v. Under a
  mesh with more than one device the kernel runs per shard (batch and heads split as the
  activations are), with the mask of the global (batch, head) indices."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout rate {rate} must be in [0, 1)")
  seed = jnp.asarray(seed, jnp.uint32)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    seed4 = jnp.concatenate([seed, jnp.zeros((2,), jnp.uint32)])
    return _flash(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, seed4, rate, blocks, interpret, None)
  return _sharded(q_BxLxNxH, k_BxSxNxH, v_BxSxNxH, seed, rate, blocks, interpret, mesh)


def _sharded(q, k, v, seed, rate, blocks, interpret, mesh):
  """The kernel under shard_map: each shard runs its rows and heads, offsetting the mask's
  (batch, head) indices by the shard's position."""
  from jax.sharding import PartitionSpec as P
  from phi1_jax.model.sharding import ACTIVATION_RULES, logical_to_spec

  spec = logical_to_spec(("batch", "length", "heads", "head_dim"), q.shape, ACTIVATION_RULES, mesh)
  batch_axes, head_axes = spec[0], spec[2]
  heads_total = q.shape[2]

  def index(axes):  # this shard's linear index along `axes` (major to minor), 0 if unsplit
    axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    idx = jnp.int32(0)
    for a in axes:
      idx = idx * mesh.shape[a] + jax.lax.axis_index(a)
    return idx

  def local(q, k, v, seed):
    offsets = jnp.stack([index(batch_axes) * q.shape[0], index(head_axes) * q.shape[2]]).astype(jnp.uint32)
    return _flash(q, k, v, jnp.concatenate([seed, offsets]), rate, blocks, interpret, heads_total)

  return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P()), out_specs=spec, check_vma=False)(
    q, k, v, seed
  )
