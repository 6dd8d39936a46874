"""The jitted train and eval steps: next-token loss (chunked over the vocabulary if asked),
gradient accumulation over microbatches, per-group norms, the spike guard (an update skipped on a
loss or gradient spike), and the per-device stop flags of a multi-process run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from phi1_jax.model import sharding
from phi1_jax.model.phi import Phi


def loss_sums(model: Phi, tokens_BxL1, dropout_key, chunk_size: int):
  """Sum of next-token cross-entropy over the batch, and the token count.

  With chunk_size > 0 the logits are made chunk by chunk (and recomputed in the backward pass),
  so a 51200-entry vocabulary never occupies [B, L, V] floats at once.
  """
  inputs_BxL, targets_BxL = tokens_BxL1[:, :-1], tokens_BxL1[:, 1:]
  h_BxLxD, _ = model.hidden_states(inputs_BxL, dropout_key=dropout_key)
  B, L, D = h_BxLxD.shape

  def chunk_loss(h_BxCxD, t_BxC):
    logits_BxCxV = model.logits(h_BxCxD)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxCxV, t_BxC).sum()

  if chunk_size <= 0 or chunk_size >= L:
    return chunk_loss(h_BxLxD, targets_BxL), B * L
  if L % chunk_size:
    raise ValueError(f"loss_chunk_size={chunk_size} must divide seq_len={L}")
  n = L // chunk_size
  h_NxBxCxD = h_BxLxD.reshape(B, n, chunk_size, D).swapaxes(0, 1)
  t_NxBxC = targets_BxL.reshape(B, n, chunk_size).swapaxes(0, 1)
  body = jax.checkpoint(lambda acc, xs: (acc + chunk_loss(*xs), None))
  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h_NxBxCxD, t_NxBxC))
  return total, B * L


def make_train_step(graphdef, tx, config):
  """One optimizer step over `grad_accum_steps` microbatches: tokens [G, B/G, L+1]."""
  base_key = jax.random.key(config.seed)

  def loss_fn(params, tokens_BxL1, key):
    total, count = loss_sums(nnx.merge(graphdef, params), tokens_BxL1, key, config.loss_chunk_size)
    return total / count

  def step(state, tokens_GxBxL1, stop_D=None):
    step_key = jax.random.fold_in(base_key, state["step"])
    G = tokens_GxBxL1.shape[0]
    dropout_on = any(config.model[f] > 0 for f in ("embd_dropout", "attn_dropout", "resid_dropout"))

    def micro(carry, xs):
      grads_acc, loss_acc = carry
      i, tokens_BxL1 = xs
      key = jax.random.fold_in(step_key, i) if dropout_on else None
      loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens_BxL1, key)
      return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss), None

    zeros = jax.tree.map(jnp.zeros_like, state["params"])
    (grads, loss), _ = jax.lax.scan(micro, (zeros, jnp.zeros((), jnp.float32)), (jnp.arange(G), tokens_GxBxL1))
    grads = jax.tree.map(lambda g: g / G, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss / G, "grad_norm": optax.global_norm(grads)}
    if config.group_norms:
      metrics.update(group_norms(state["params"], grads, updates, config.group_norms_per_layer))
    if stop_D is not None:  # any process's stop flag, read by every process with this step's metrics
      metrics["stop"] = jnp.max(stop_D)
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    if "spike_guard" in state:
      skip, new_state["spike_guard"] = spike_check(
        state["spike_guard"], metrics["loss"], metrics["grad_norm"], config.spike_guard.factor
      )
      kept = (state["params"], state["opt_state"])
      new_state["params"], new_state["opt_state"] = jax.tree.map(
        lambda new, old: jnp.where(skip, old, new), (params, opt_state), kept
      )
      metrics["skipped"] = skip.astype(jnp.float32)
      metrics["skipped_steps"] = new_state["spike_guard"]["skipped"]
    return new_state, metrics

  return step


def spike_guard_init(window: int) -> dict:
  """The spike guard's running statistics, part of the checkpointed state: the last `window`
  accepted steps' losses and gradient norms, how many steps were accepted and skipped."""
  return {
    "losses": jnp.zeros((window,), jnp.float32),
    "grad_norms": jnp.zeros((window,), jnp.float32),
    "accepted": jnp.zeros((), jnp.int32),
    "skipped": jnp.zeros((), jnp.int32),
  }


def spike_check(guard: dict, loss, grad_norm, factor: float):
  """(skip, the guard's next statistics): skip when the window is full and a finite loss or gradient
  norm exceeds `factor` times its mean over the window. A skipped step leaves the window as it was;
  a non-finite loss is never skipped here: the trainer stops on it."""
  window = guard["losses"].shape[0]

  def spike(value, history):
    return jnp.isfinite(value) & (value > factor * history.mean())

  skip = (guard["accepted"] >= window) & (spike(loss, guard["losses"]) | spike(grad_norm, guard["grad_norms"]))
  slot = guard["accepted"] % window
  return skip, {
    "losses": jnp.where(skip, guard["losses"], guard["losses"].at[slot].set(loss)),
    "grad_norms": jnp.where(skip, guard["grad_norms"], guard["grad_norms"].at[slot].set(grad_norm)),
    "accepted": guard["accepted"] + jnp.where(skip, 0, 1),
    "skipped": guard["skipped"] + jnp.where(skip, 1, 0),
  }


PARAM_GROUPS = ("embedding", "attention", "mlp", "layer_norm", "lm_head")


def param_group(name: str) -> str:
  """The group of a parameter by its name in the model: one of PARAM_GROUPS, or "other"."""
  if name == "embed":
    return "embedding"
  if name.startswith("lm_head"):
    return "lm_head"
  if "ln_" in name:
    return "layer_norm"
  if name.split("_")[0] in ("q", "k", "v", "o"):
    return "attention"
  if name.startswith(("fc1", "fc2")):
    return "mlp"
  return "other"


def group_norms(params, grads, updates, per_layer: bool = False) -> dict:
  """L2 norms of the parameters, gradients (before clipping) and optimizer updates in each group and
  overall, and each update/param ratio: `param_norm/attention`, `update_ratio/mlp`, `param_norm`...
  (the overall gradient norm is the step's `grad_norm`); with `per_layer`, the blocks' groups per
  layer too: `grad_norm/layer_3/attention`. Computed on the device with the step, read with its
  loss: no extra host sync."""
  squares = {}  # (kind, group) -> sum of squares, in float32

  def add(key, value):
    squares[key] = squares.get(key, 0.0) + value

  for kind, tree in (("param", params), ("grad", grads), ("update", updates)):
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
      group, x_squared = param_group(str(path[-1].key)), jnp.square(x.astype(jnp.float32))
      add((kind, group), jnp.sum(x_squared))
      add((kind, None), jnp.sum(x_squared))
      if per_layer and str(path[0].key) == "blocks":  # stacked blocks: the layer is the leading axis
        by_layer = jnp.sum(x_squared, axis=tuple(range(1, x.ndim)))
        for i in range(x.shape[0]):
          add((kind, f"layer_{i}/{group}"), by_layer[i])
  norms = {f"{kind}_norm/{group}" if group else f"{kind}_norm": jnp.sqrt(v) for (kind, group), v in squares.items()}
  del norms["grad_norm"]
  for suffix in [f"/{g}" for kind, g in squares if kind == "param" and g] + [""]:
    norms[f"update_ratio{suffix}"] = norms[f"update_norm{suffix}"] / norms[f"param_norm{suffix}"]
  return norms


def make_eval_step(graphdef, config):
  def step(params, tokens_BxL1):
    total, count = loss_sums(nnx.merge(graphdef, params), tokens_BxL1, None, config.loss_chunk_size)
    return total, count

  return step


def jit_train_step(graphdef, tx, config, mesh, state_shard, stop_flags: bool = False):
  """The jitted train step on `mesh`: (state, tokens [G, B/G, L+1]) -> (state, metrics); donates state.

  With stop_flags it takes a third argument, `stop_flags_array`'s one flag per device, and its
  metrics carry "stop": their max.
  """
  in_shardings = (state_shard, sharding.batch_sharding(mesh, 1))
  if stop_flags:
    in_shardings += (per_device_sharding(mesh),)
  return jax.jit(
    sharding.on_mesh(make_train_step(graphdef, tx, config), mesh),
    in_shardings=in_shardings,
    out_shardings=(state_shard, sharding.replicated(mesh)),
    donate_argnums=0,
  )


def per_device_sharding(mesh):
  """A vector of one element per device: each device holds its own."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))


def stop_flags_array(stop: bool, mesh) -> jax.Array:
  """This process's stop flag on each of its devices, as one global vector [n_devices]."""
  return jax.make_array_from_callback(
    (mesh.devices.size,), per_device_sharding(mesh), lambda _: np.full((1,), stop, np.int32)
  )
