"""The train step in process: the trainer's sharded state and jitted step on a fixed batch, checked
against a float32 reference written here from the model's forward pass and optax by hand."""

import sys

import jax
import numpy as np
import pytest
import optax
from flax import nnx

from helpers import REPO
from phi1_jax.model import sharding
from phi1_jax.train.state import create_state, state_shardings
from phi1_jax.train.step import jit_train_step


def tiny_config(grad_accum_steps: int, loss_chunk_size: int):
  sys.path.insert(0, str(REPO / "configs"))
  import tiny

  config = tiny.get_config()
  config.model.n_layers, config.model.vocab_size = 2, 512
  config.batch_size, config.seq_len = 4, 32
  config.grad_accum_steps, config.loss_chunk_size = grad_accum_steps, loss_chunk_size
  config.optimizer.warmup_steps = 0  # the peak rate from step 0, so the first step already moves the loss
  return config


def reference_loss(graphdef, params, tokens_BxL1):
  """Mean next-token cross-entropy of the model's logits."""
  logits_BxLxV = nnx.merge(graphdef, params)(tokens_BxL1[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, tokens_BxL1[:, 1:]).mean()


def reference_step(graphdef, tx, params, opt_state, tokens_BxL1):
  """The mean loss, its gradient, one optax update."""
  loss, grads = jax.value_and_grad(lambda p: reference_loss(graphdef, p, tokens_BxL1))(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return loss, optax.global_norm(grads), optax.apply_updates(params, updates), opt_state


def test_train_step_matches_a_reference_and_lowers_the_loss():
  # two microbatches and a loss in chunks: the step's own paths, against a reference that has neither
  config = tiny_config(grad_accum_steps=2, loss_chunk_size=16)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  graphdef, _, state_shard, tx, _ = state_shardings(config, mesh)
  state = create_state(config, tx, state_shard)
  step_fn = jit_train_step(graphdef, tx, config, mesh, state_shard)
  tokens_BxL1 = np.random.default_rng(0).integers(1, 512, (config.batch_size, config.seq_len + 1), dtype=np.int32)
  tokens_GxBxL1 = tokens_BxL1.reshape(config.grad_accum_steps, -1, config.seq_len + 1)

  # the reference starts from a host copy: the step donates the state it is given
  params, opt_state = jax.device_get((state["params"], state["opt_state"]))
  reference = jax.jit(lambda params, opt_state: reference_step(graphdef, tx, params, opt_state, tokens_BxL1))
  assert int(state["step"]) == 0
  losses = []
  for i in range(3):
    state, metrics = step_fn(state, sharding.global_batch(tokens_GxBxL1, mesh, leading_dims=1))
    ref_loss, ref_grad_norm, params, opt_state = reference(params, opt_state)
    losses.append(float(metrics["loss"]))
    assert int(state["step"]) == i + 1
    np.testing.assert_allclose(losses[-1], float(ref_loss), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(ref_grad_norm), rtol=1e-4)
    # Adam divides by the gradient's scale: where a gradient is near 0, summation-order noise moves the
    # update by a fraction of lr (3e-3); a wrong step would be off by about lr
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), state["params"], params)
  assert losses[0] > losses[1] > losses[2], losses

  # Adam's step count and moments advanced with the state's own step
  (adam,) = [s for s in jax.tree.leaves(state["opt_state"], is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")]
  assert int(adam.count) == 3
  assert all(np.all(np.isfinite(m)) and np.any(m != 0) for m in jax.tree.leaves(adam.mu))


# each group's parameters by name, written out here rather than taken from the step's own grouping
GROUPS = {
  "embedding": ["embed"],
  "attention": [f"{p}_{w}" for p in "qkvo" for w in ("kernel", "bias")],
  "mlp": ["fc1_kernel", "fc1_bias", "fc2_kernel", "fc2_bias"],
  "layer_norm": ["ln_scale", "ln_bias", "final_ln_scale", "final_ln_bias"],
  "lm_head": ["lm_head_kernel", "lm_head_bias"],
}


@pytest.mark.slow  # compiles a second train step (norms on); the fast tier keeps the plain step
def test_group_norms_match_a_direct_computation():
  config = tiny_config(grad_accum_steps=1, loss_chunk_size=0)
  config.group_norms_per_layer = True
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  graphdef, _, state_shard, tx, _ = state_shardings(config, mesh)
  state = create_state(config, tx, state_shard)
  step_fn = jit_train_step(graphdef, tx, config, mesh, state_shard)
  tokens_BxL1 = np.random.default_rng(1).integers(1, 512, (config.batch_size, config.seq_len + 1), dtype=np.int32)
  batch = sharding.global_batch(tokens_BxL1[None], mesh, leading_dims=1)
  state, _ = step_fn(state, batch)  # past the first step, so Adam's moments are not all zero
  params, opt_state = jax.device_get((state["params"], state["opt_state"]))
  state, metrics = step_fn(state, batch)
  metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}

  _, _, new_params, _ = jax.jit(lambda p, o: reference_step(graphdef, tx, p, o, tokens_BxL1))(params, opt_state)
  grads = jax.jit(jax.grad(lambda p: reference_loss(graphdef, p, tokens_BxL1)))(params)
  updates = jax.tree.map(lambda new, old: np.float64(new) - np.float64(old), new_params, params)

  def leaves_by_name(tree):
    return {str(path[-1].key): np.float64(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}

  expected = {}
  for kind, tree in (("param", params), ("grad", grads), ("update", updates)):
    leaves = leaves_by_name(tree)
    assert sorted(leaves) == sorted(n for names in GROUPS.values() for n in names)
    for group, names in GROUPS.items():
      expected[f"{kind}_norm/{group}"] = np.sqrt(sum(np.sum(leaves[n] ** 2) for n in names))
      for layer in range(config.model.n_layers):  # the blocks' parameters, stacked on a leading layer axis
        in_blocks = [n for n in names if n in leaves_by_name(tree["blocks"])]
        if in_blocks:
          expected[f"{kind}_norm/layer_{layer}/{group}"] = np.sqrt(
            sum(np.sum(leaves[n][layer] ** 2) for n in in_blocks)
          )
    expected[f"{kind}_norm"] = np.sqrt(sum(np.sum(x**2) for x in leaves.values()))
  expected.pop("grad_norm")  # the step's own global norm, checked by the test above
  for suffix in [name.removeprefix("param_norm") for name in expected if name.startswith("param_norm/")] + [""]:
    expected[f"update_ratio{suffix}"] = expected[f"update_norm{suffix}"] / expected[f"param_norm{suffix}"]

  assert set(metrics) == set(expected) | {"loss", "grad_norm"}
  assert "grad_norm/layer_1/mlp" in metrics and "grad_norm/layer_0/embedding" not in metrics
  for name, value in expected.items():
    # the updates are differences of float32 parameters: their norms carry the rounding of those
    np.testing.assert_allclose(metrics[name], value, rtol=1e-4 if name.startswith(("param", "grad")) else 2e-3)
  assert all(metrics[f"update_ratio/{g}"] > 0 for g in GROUPS)


@pytest.mark.slow  # compiles the guarded step and an Orbax round trip
def test_spike_guard_skips_a_random_batch_counts_it_and_resumes_exactly(tmp_path):
  import orbax.checkpoint as ocp

  config = tiny_config(grad_accum_steps=1, loss_chunk_size=0)
  config.spike_guard.factor, config.spike_guard.window = 1.5, 3
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  graphdef, abstract_state, state_shard, tx, _ = state_shardings(config, mesh)
  state = create_state(config, tx, state_shard)
  step_fn = jit_train_step(graphdef, tx, config, mesh, state_shard)
  length = config.seq_len + 1
  periodic = np.tile((np.arange(length) % 7 + 1)[None], (config.batch_size, 1)).astype(np.int32)  # learnt fast
  uniform = np.random.default_rng(0).integers(1, 512, (config.batch_size, length), dtype=np.int32)

  def run(state, tokens_BxL1):
    state, metrics = step_fn(state, sharding.global_batch(tokens_BxL1[None], mesh, leading_dims=1))
    return state, {k: float(v) for k, v in jax.device_get(metrics).items()}

  losses = []
  for _ in range(6):  # the window fills (3 steps) and the loss falls: nothing is skipped
    state, metrics = run(state, periodic)
    losses.append(metrics["loss"])
    assert metrics["skipped"] == 0 and metrics["skipped_steps"] == 0
  assert losses[-1] < losses[0] / 2, losses

  before = jax.device_get({k: state[k] for k in ("params", "opt_state")})
  state, metrics = run(state, uniform)  # uniformly random tokens once the loss has fallen: a spike
  assert metrics["loss"] > 1.5 * np.mean(losses[-3:]), (metrics, losses)
  assert metrics["skipped"] == 1 and metrics["skipped_steps"] == 1
  assert int(state["step"]) == 7  # the step (and its batch) is consumed; the update is not applied
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves({k: state[k] for k in ("params", "opt_state")})):
    assert np.array_equal(a, np.asarray(b))

  # the guard's statistics are part of the checkpointed state: a restored run continues bit for bit
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "state", abstract_state)
  assert int(restored["spike_guard"]["skipped"]) == 1
  for tokens in (periodic, uniform):
    state, metrics = run(state, tokens)
    restored, restored_metrics = run(restored, tokens)
    assert metrics == restored_metrics
  assert metrics["skipped"] == 1 and metrics["skipped_steps"] == 2  # a second spike, after a resume
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    assert np.array_equal(np.asarray(a), np.asarray(b))
