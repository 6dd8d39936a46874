"""phi1_jax.model.flash: the fused dropout kernel against the unfused path (phi1_jax.model.attention),
and the dropout mask's statistics. On CPU the kernel runs in Pallas' interpreter; on a GPU
(benchmarks/gpu_check.sh) the same tests run it compiled by Triton, where float32 dots are TF32
(hence the looser tolerance)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO, repo_env
from phi1_jax.model import flash as A
from phi1_jax.model.attention import attention_reference

B, L, N, H = 2, 64, 2, 16
# Forward and backward tiled differently: matching gradients show that the backward kernel
# regenerates the forward's mask, and that the mask does not depend on the tiling.
BLOCKS = A.Blocks(block_q=16, block_k=32, bwd_outer=32, bwd_inner=16)
SEED = jnp.array([12345, 678], jnp.uint32)
ON_GPU = jax.default_backend() == "gpu"
F32_RTOL = 5e-3 if ON_GPU else 1e-5


def _qkv(seed=0, shape=(B, L, N, H)):
  rng = np.random.RandomState(seed)
  return tuple(jnp.asarray(rng.normal(size=shape).astype(np.float32)) for _ in range(3))


@jax.jit(static_argnums=0)
def _value_and_grads(fn, q, k, v):
  """Output and the gradients of a fixed random projection of it, in one compiled program."""
  out, vjp = jax.vjp(fn, q, k, v)
  proj = jnp.asarray(np.random.RandomState(7).normal(size=out.shape).astype(np.float32))
  return out, vjp(proj.astype(out.dtype))


def _assert_close(got, want, rtol):
  err = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  assert err < rtol, f"relative error {err:.2e}"


@pytest.mark.parametrize("rate, dtype", [(0.0, "float32"), (0.3, "float32"), (0.1, "bfloat16")])
def test_kernel_matches_unfused_attention_forward_and_gradients(rate, dtype):
  """rate 0: plain causal attention (jax.nn's too); rate > 0: the unfused path with the same mask.
  The reference computes in float32 at full matmul precision; bfloat16 inputs to bf16 tolerance."""
  q, k, v = (x.astype(dtype) for x in _qkv())
  kernel = lambda q, k, v: A.flash_attention(q, k, v, SEED, rate, blocks=BLOCKS).astype(jnp.float32)
  out, grads = _value_and_grads(kernel, q, k, v)
  with jax.default_matmul_precision("highest"):
    reference = lambda q, k, v: attention_reference(q, k, v, SEED, rate)
    ref_out, ref_grads = _value_and_grads(reference, *(x.astype(jnp.float32) for x in (q, k, v)))
  rtol = F32_RTOL if dtype == "float32" else 2e-2
  _assert_close(out, ref_out, rtol)
  for g, r in zip(grads, ref_grads):
    _assert_close(g.astype(jnp.float32), r, rtol)
  if rate == 0.0:
    _assert_close(out, jax.nn.dot_product_attention(q, k, v, is_causal=True), rtol)
  else:
    assert float(jnp.linalg.norm(out - attention_reference(q, k, v, SEED, 0.0))) > 1.0  # it did drop


def test_kernel_output_is_unbiased_under_dropout():
  """With v = 1 every row of plain attention is 1; kept probabilities scaled by 1/(1-p) average 1."""
  q, k, _ = _qkv(1, (4, 64, 2, 16))
  ones = jnp.ones_like(q)
  out = jax.jit(lambda q, k, v: A.flash_attention(q, k, v, SEED, 0.5, blocks=BLOCKS))(q, k, ones)
  rows = np.asarray(out[..., 0])  # [B, L, N]; all H columns are equal
  assert set(np.unique(rows[:, 0])) <= {0.0, 2.0}  # the first query sees one key: dropped, or 1 / (1 - 0.5)
  assert abs(rows[:, 16:].mean() - 1.0) < 0.05  # rows with 17+ keys: the mean of 384 sums


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_mask_keep_rate_and_independence(rate):
  keep = np.asarray(A.dropout_keep(SEED, 4, 8, 256, 256, rate))  # 2M positions
  n = keep.size
  assert abs(keep.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  # neighbours along keys, queries, heads and batch rows are uncorrelated
  for axis in range(4):
    a, b = np.moveaxis(keep, axis, 0)[:-1].ravel(), np.moveaxis(keep, axis, 0)[1:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
  # every query row and every key column keeps about its share (no striping)
  per_query = keep.mean(axis=(0, 1, 3))
  assert np.abs(per_query - (1 - rate)).max() < 6 * np.sqrt(rate * (1 - rate) / (4 * 8 * 256))


def test_mask_is_a_function_of_seed_and_step():
  """The trainer's per-step key: the same step gives the same mask, another step another one."""
  base = jax.random.key(0)
  mask = lambda step: np.asarray(A.dropout_keep(A.seed_from_key(jax.random.fold_in(base, step)), 2, 4, 64, 64, 0.1))
  np.testing.assert_array_equal(mask(3), mask(3))
  agree = (mask(3) == mask(4)).mean()
  assert abs(agree - (0.9**2 + 0.1**2)) < 0.01  # independent masks agree where both keep or both drop


def test_kernel_lowers_for_cuda():
  """The Triton lowering (what a GPU compiles) of the forward and backward kernels, in bfloat16 at
  phi-1's head size and default tiles: unsupported operations would fail here, on CPU."""
  q = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16)
  seed = jax.ShapeDtypeStruct((2,), jnp.uint32)
  loss = lambda q, k, v, s: A.flash_attention(q, k, v, s, 0.1, interpret=False).astype(jnp.float32).sum()
  exported = jax.export.export(
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
    platforms=["cuda"],
    disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
  )(q, q, q, seed)
  text = exported.mlir_module()
  assert "flash_dropout_fwd" in text and "flash_dropout_bwd" in text


def test_model_attention_pallas_and_unfused_paths_drop_the_same_positions():
  """model.attention with impl "pallas" (the kernel) and "xla" (probabilities written out) agree
  under the same dropout key; "auto" is the kernel on GPU, the unfused path elsewhere."""
  from phi1_jax.model.attention import attention

  q, k, v = _qkv(2, (2, 32, 2, 16))
  key = jax.random.key(5)
  run = jax.jit(
    lambda q, k, v, impl: attention(q, k, v, None, is_causal=True, impl=impl, dropout_rate=0.2, key=key),
    static_argnums=3,
  )
  pallas, xla = run(q, k, v, "pallas"), run(q, k, v, "xla")
  _assert_close(pallas, xla, F32_RTOL)
  np.testing.assert_array_equal(run(q, k, v, "auto"), pallas if ON_GPU else xla)
  assert float(jnp.abs(xla - attention_reference(q, k, v, SEED, 0.0)).max()) > 0.1  # dropout acted


SHARDED_CHECK = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict
from phi1_jax.model import flash as A
from phi1_jax.model import sharding
from phi1_jax.model.attention import attention_reference
blocks = A.Blocks(block_q=16, block_k=16, bwd_outer=16, bwd_inner=16)
rng = np.random.RandomState(0)
q, k, v = (jnp.asarray(rng.normal(size=(2, 16, 2, 16)).astype(np.float32)) for _ in range(3))
seed = jnp.array([3, 4], jnp.uint32)
ref, ref_grad = jax.value_and_grad(lambda q: attention_reference(q, k, v, seed, 0.3).sum())(q)
mesh = sharding.make_mesh(ConfigDict(dict(data=1, fsdp=2, tensor=2)))
f = sharding.on_mesh(lambda q, k, v: A.flash_attention(q, k, v, seed, 0.3, blocks=blocks), mesh)
qs, ks, vs = (jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))) for x in (q, k, v))
out, grad = jax.jit(jax.value_and_grad(lambda q: f(q, ks, vs).sum()))(qs)
print(abs(float(out - ref)) / abs(float(ref)), float(jnp.abs(grad - ref_grad).max()))
"""


@pytest.mark.skipif(ON_GPU, reason="simulated CPU devices")
def test_kernel_per_shard_uses_the_global_mask():
  """On a (1, 2, 2) mesh of 4 CPU devices (batch and heads split) each shard runs the kernel on its
  rows and heads and drops what the unsharded reference drops."""
  env = repo_env(devices=4)
  proc = subprocess.run(
    [sys.executable, "-c", SHARDED_CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  loss_err, grad_err = map(float, proc.stdout.split()[-2:])
  assert loss_err < 1e-5 and grad_err < 1e-5
