"""The training state: the optimizer, and the {params, opt_state, step} tree (with the spike guard's
statistics when it is on) created or restored already sharded."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from phi1_jax.cli import UserError
from phi1_jax.model import sharding
from phi1_jax.model.phi import Phi, abstract_model
from phi1_jax.train.checks import model_config_of
from phi1_jax.train.step import spike_guard_init


def lr_schedule(opt_cfg, total_steps: int):
  """Linear warmup from 0 to the peak, then linear decay to end_lr at total_steps (the paper's).

  As optax's warmup schedules, step 0 has lr 0: its update only seeds Adam's moments.
  """
  warmup = min(opt_cfg.warmup_steps, total_steps)
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, opt_cfg.lr, max(warmup, 1)),
      optax.linear_schedule(opt_cfg.lr, opt_cfg.end_lr, max(total_steps - warmup, 1)),
    ],
    [warmup],
  )


def decay_mask(params):
  """Weight decay on matrices only: not on biases, LayerNorm scales and shifts."""

  def keep(path, _):
    name = str(path[-1].key)
    return not (name.endswith("_bias") or "ln_" in name)

  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config):
  opt = config.optimizer
  schedule = lr_schedule(opt, config.total_steps)
  adamw = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
  clip = [optax.clip_by_global_norm(opt.grad_clip)] if opt.grad_clip > 0 else []
  return optax.chain(*clip, adamw), schedule


def init_from_pretrained(path: str):
  """Parameters of a phi1_jax checkpoint or a Hugging Face folder (take_architecture checked its config)."""
  from phi1_jax.model import checkpoint

  try:
    _, params = checkpoint.load_params(path)
  except (ValueError, FileNotFoundError) as e:
    raise UserError(f"init_from {path}: {e}") from None
  return params


def state_shardings(config, mesh):
  """(graphdef, abstract state with shardings, state shardings, tx, schedule) for `mesh`.

  Nothing is allocated: the trainer creates and restores the state to these shardings, and
  `phi1_jax.plan` compiles the step for a mesh it does not have.
  """
  model_cfg = model_config_of(config)
  abstract = abstract_model(model_cfg)
  tx, schedule = make_optimizer(config)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  p_shard = sharding.param_shardings(abstract, mesh, rules)
  abstract_params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shard = optax.tree_map_params(
    tx, lambda _, s: s, abstract_opt, p_shard, transform_non_params=lambda _: sharding.replicated(mesh)
  )
  state_shard = {"params": p_shard, "opt_state": opt_shard, "step": sharding.replicated(mesh)}
  shapes = {"params": abstract_params, "opt_state": abstract_opt, "step": jax.ShapeDtypeStruct((), jnp.int32)}
  if config.spike_guard.factor > 0:
    shapes["spike_guard"] = jax.eval_shape(lambda: spike_guard_init(config.spike_guard.window))
    state_shard["spike_guard"] = jax.tree.map(lambda _: sharding.replicated(mesh), shapes["spike_guard"])
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shard)
  return nnx.graphdef(abstract), abstract_state, state_shard, tx, schedule


def create_state(config, tx, state_shard, init_params=None):
  """A fresh state (or one around `init_params`), created already sharded: no device ever holds
  the whole model."""
  model_cfg = model_config_of(config)

  def fresh_state(params):
    if params is None:
      params = nnx.to_pure_dict(nnx.state(Phi(model_cfg, rngs=nnx.Rngs(config.seed)), nnx.Param))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    if config.spike_guard.factor > 0:
      state["spike_guard"] = spike_guard_init(config.spike_guard.window)
    return state

  return jax.jit(fresh_state, out_shardings=state_shard)(init_params)
