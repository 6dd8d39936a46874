"""Properties of phi1_jax.model.phi that parity with transformers alone would not pin down."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1_jax.model.config import ARCHITECTURE_FIELDS, PRESETS
from phi1_jax.model.phi import ModelConfig, abstract_model, count_params, rotary

TINY = ModelConfig(
  vocab_size=53,
  d_model=30,
  n_layers=2,
  n_heads=3,
  head_dim=10,
  mlp_dim=40,
  rotary_dim=4,
  max_seq_len=32,
  eos_id=0,
  init_std=0.2,
)
SHAPE = (2, 15)  # every forward pass uses this shape, so compiles are shared across tests
POSITIONS = jnp.broadcast_to(jnp.arange(SHAPE[1]), SHAPE)

# jit compiles each (config, shape) once; eager dispatch would compile every op separately.
_rotary = jax.jit(rotary, static_argnums=(2, 3))


@nnx.jit
def _logits(model, tokens_BxL, positions_BxL=POSITIONS, dropout_key=None):
  return model(tokens_BxL, positions_BxL=positions_BxL, dropout_key=dropout_key)


def _tokens(seed=0, shape=SHAPE):
  return jnp.asarray(np.random.RandomState(seed).randint(1, TINY.vocab_size, shape))  # no eos (0)


@pytest.fixture(scope="module")
def tiny():
  """TINY with numpy-drawn parameters: compiling JAX's random-number kernels would dominate the runtime."""
  model = abstract_model(TINY)
  state = nnx.state(model, nnx.Param)
  rng = np.random.RandomState(0)
  draw = lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape).astype(np.float32))
  nnx.replace_by_pure_dict(state, jax.tree.map(draw, nnx.to_pure_dict(state)))
  nnx.update(model, state)
  return model


def _with(model, **changes):
  """The same parameters under a changed config (no new initialisation)."""
  variant = abstract_model(dataclasses.replace(model.cfg, **changes))
  nnx.update(variant, nnx.state(model, nnx.Param))
  return variant


@pytest.mark.parametrize("preset, expected", [("phi1", 1_418_270_720), ("phi1_small", 356_794_368)])
def test_parameter_counts_match_transformers(preset, expected):
  assert count_params(PRESETS[preset]) == expected  # abstract: nothing of that size is allocated


@pytest.mark.parametrize("name, preset", [("tiny", "tiny"), ("phi1", "phi1"), ("phi1_small", "phi1_small")])
def test_configs_build_their_preset(name, preset):
  """configs/*.py take their model from model.config's presets: the architecture is the preset's."""
  import importlib.util
  from pathlib import Path

  spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  built = ModelConfig.from_dict(module.get_config().model)
  assert {f: getattr(built, f) for f in ARCHITECTURE_FIELDS} == {
    f: getattr(PRESETS[preset], f) for f in ARCHITECTURE_FIELDS
  }
  assert name != "tiny" or built == PRESETS["tiny"]


def test_rotary_touches_exactly_rotary_dim():
  rotary_dim, head_dim = 4, 10
  x_BxLxNxH = jnp.asarray(np.random.RandomState(0).normal(size=(2, 7, 3, head_dim)).astype(np.float32))
  positions_BxL = jnp.broadcast_to(jnp.arange(7), (2, 7))
  y = np.asarray(_rotary(x_BxLxNxH, positions_BxL, rotary_dim, 10000.0))
  x = np.asarray(x_BxLxNxH)
  np.testing.assert_array_equal(y[..., rotary_dim:], x[..., rotary_dim:])  # pass-through, every position
  np.testing.assert_allclose(y[:, 0], x[:, 0], atol=1e-7)  # angle 0 at position 0
  assert np.all(np.abs(y[:, 1:, :, :rotary_dim] - x[:, 1:, :, :rotary_dim]).max(axis=-1) > 1e-4)
  # a rotation: each (i, i + rotary_dim/2) pair keeps its length
  half = rotary_dim // 2
  norms = lambda a: np.hypot(a[..., :half], a[..., half:rotary_dim])
  np.testing.assert_allclose(norms(y), norms(x), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(_rotary(x_BxLxNxH, positions_BxL, 0, 10000.0)), x)


def test_pass_through_dims_enter_scores_as_a_plain_dot_product():
  rotary_dim, head_dim = 4, 10
  rng = np.random.RandomState(1)
  q, k, delta = (jnp.asarray(rng.normal(size=(1, 5, 2, head_dim)).astype(np.float32)) for _ in range(3))
  positions_BxL = jnp.arange(5)[None] * 3  # q and k at different positions, so rotation matters

  def scores(q, k):  # [B, N, L, S] before scaling
    rq, rk = _rotary(q, positions_BxL, rotary_dim, 10000.0), _rotary(k, positions_BxL, rotary_dim, 10000.0)
    return np.asarray(jnp.einsum("blnh,bsnh->bnls", rq, rk), np.float64)

  delta = delta.at[..., :rotary_dim].set(0.0)  # pass-through dims only
  q2, k2 = q + delta, k + delta
  qd, kd = np.asarray(q, np.float64), np.asarray(k, np.float64)
  dd = np.asarray(delta, np.float64)[..., rotary_dim:]
  # score(q, k) - score(q', k) == (q - q')[pass] . k[pass], independent of the positions
  expected_q = -np.einsum("blnh,bsnh->bnls", dd, kd[..., rotary_dim:])
  np.testing.assert_allclose(scores(q, k) - scores(q2, k), expected_q, atol=1e-5)
  expected_k = -np.einsum("blnh,bsnh->bnls", qd[..., rotary_dim:], dd)
  np.testing.assert_allclose(scores(q, k) - scores(q, k2), expected_k, atol=1e-5)


def test_causal_later_tokens_do_not_change_earlier_logits(tiny):
  tokens = _tokens()
  changed = tokens.at[:, 8].set(tokens[:, 8] % (TINY.vocab_size - 1) + 1)
  a, b = np.asarray(_logits(tiny, tokens)), np.asarray(_logits(tiny, changed))
  np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
  assert np.abs(a[:, 8:] - b[:, 8:]).max() > 1e-3


def test_doc_mask_separates_packed_documents(tiny):
  """Document 2 packed after document 1 gives the logits of document 2 run alone at the same positions.

  Rotary makes attention scores depend on relative positions only, but the logits agree to float
  rounding only when document 2 alone keeps the absolute positions it had in the pack.
  """
  model = _with(tiny, doc_mask=True)
  packed = _tokens(1).at[:, 5].set(TINY.eos_id)  # document 1 is tokens 0..5, its eos included
  # Document 2 alone, moved to the front; the filler after it cannot reach it (causal).
  alone = jnp.concatenate([packed[:, 6:], _tokens(2)[:, :6]], axis=1)
  alone_positions = POSITIONS + 6
  packed_logits = np.asarray(_logits(model, packed))
  alone_logits = np.asarray(_logits(model, alone, alone_positions))[:, :9]
  np.testing.assert_allclose(packed_logits[:, 6:], alone_logits, atol=1e-5)
  # Without the mask the second document does see the first.
  assert np.abs(np.asarray(_logits(tiny, packed))[:, 6:] - alone_logits).max() > 1e-3


def test_dropout_only_with_a_key(tiny):
  model = _with(tiny, embd_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
  tokens = _tokens()
  plain = np.asarray(_logits(model, tokens))
  np.testing.assert_array_equal(plain, np.asarray(_logits(model, tokens)))
  np.testing.assert_allclose(plain, np.asarray(_logits(tiny, tokens)), atol=1e-6)  # no key: no dropout
  key = jax.random.key(3)
  dropped = np.asarray(_logits(model, tokens, POSITIONS, key))
  assert np.abs(dropped - plain).max() > 1e-3
  np.testing.assert_array_equal(dropped, np.asarray(_logits(model, tokens, POSITIONS, key)))  # same key, same mask
  assert np.abs(np.asarray(_logits(model, tokens, POSITIONS, jax.random.key(4))) - dropped).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32(tiny):
  tokens = _tokens()
  f32 = np.asarray(_logits(tiny, tokens))
  bf16 = _logits(_with(tiny, dtype="bfloat16"), tokens)  # the same float32 parameters
  assert bf16.dtype == jnp.float32  # logits are accumulated in float32
  bf16 = np.asarray(bf16)
  assert np.all(np.isfinite(bf16))
  rel = np.abs(bf16 - f32).max() / np.abs(f32).max()
  assert 0 < rel < 0.05, rel
