r"""The trainer: `python -m phi1_jax.train --config=configs/tiny.py --workdir=DIR`.

Overrides: `--config.optimizer.lr=3e-4 --config.total_steps=2000`. A workdir that holds
checkpoints resumes from the latest one; the data iterator, optimizer and step come back with
it, and dropout keys are `fold_in(seed, step)`, so a resumed run continues bit for bit.

Workdir: config.json, model_config.json, the tokenizer, metrics.jsonl, tb/ (TensorBoard),
checkpoints/<step>/{state,data}.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging as py_logging
import math
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from phi1_jax import paths
from phi1_jax.model import sharding
from phi1_jax.train.metrics import MetricWriter, Progress, _duration, flops_per_token, peak_flops
from phi1_jax.model.phi import ModelConfig, Phi, abstract_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, config.")

SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_dim")


class UserError(Exception):
  """A mistake in the user's config, flags or files: reported as one line, exit code 2."""


class DiskFull(Exception):
  """A checkpoint did not fit on its filesystem: reported as one line, exit code 1."""


# ----------------------------------------------------------------------------- optimizer


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


# ----------------------------------------------------------------------------- step functions


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
    if stop_D is not None:  # any process's stop flag, read by every process with this step's metrics
      metrics["stop"] = jnp.max(stop_D)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return step


def make_eval_step(graphdef, config):
  def step(params, tokens_BxL1):
    total, count = loss_sums(nnx.merge(graphdef, params), tokens_BxL1, None, config.loss_chunk_size)
    return total, count

  return step


# ----------------------------------------------------------------------------- setup


def checkpoint_model_config(path: str) -> ModelConfig:
  """The ModelConfig of an init_from checkpoint (phi1_jax or Hugging Face), read without its weights."""
  from phi1_jax.model import checkpoint

  problem = paths.bucket_problem(path)
  if problem:
    raise UserError(f"init_from {path}: {problem}")
  folder = paths.as_path(path)
  if not folder.exists():
    raise UserError(f"init_from {path} does not exist")
  try:
    return checkpoint.resolve(folder).model_config()
  except (ValueError, TypeError, FileNotFoundError) as e:
    raise UserError(f"init_from {path}: {e}") from None


def take_architecture(config):
  """Fills what config leaves unset (None) from the init_from checkpoint: config.model's
  architecture fields and seq_len (the checkpoint's context length). A value given that
  contradicts the checkpoint is refused, all of them in one line."""
  if not config.init_from:
    return
  from phi1_jax.config import ARCHITECTURE_FIELDS

  trained = checkpoint_model_config(config.init_from)
  diff = []
  for name in ARCHITECTURE_FIELDS:
    if config.model[name] is None:
      config.model[name] = getattr(trained, name)
    elif config.model[name] != getattr(trained, name):
      diff.append(f"model.{name}={config.model[name]} (checkpoint: {getattr(trained, name)})")
  if diff:
    raise UserError(
      f"init_from {config.init_from} was trained with another architecture: {', '.join(diff)}; "
      f"leave these unset to take the checkpoint's"
    )
  if config.seq_len is None:
    config.seq_len = trained.max_seq_len


def model_config_of(config) -> ModelConfig:
  unset = [f"model.{k}" for k, v in config.model.items() if v is None] + (["seq_len"] if config.seq_len is None else [])
  if unset and config.init_from:
    take_architecture(config)
  elif unset:
    raise UserError(f"{', '.join(unset)} unset: give them, or --config.init_from a checkpoint to take them from")
  try:
    cfg = ModelConfig.from_dict(config.model.to_dict())
  except (ValueError, TypeError) as e:
    raise UserError(str(e)) from None
  if cfg.max_seq_len < config.seq_len:
    raise UserError(f"seq_len={config.seq_len} exceeds model.max_seq_len={cfg.max_seq_len}")
  return cfg


def check_config(config):
  take_architecture(config)  # what a finetuning config leaves to its init_from checkpoint
  for name in (
    "total_steps",
    "batch_size",
    "seq_len",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "grad_accum_steps",
  ):
    if config[name] is None:
      raise UserError(f"config.{name} is unset: give it, or --config.init_from a checkpoint to take it from")
    if config[name] <= 0:
      raise UserError(f"config.{name}={config[name]} must be positive")
  if config.batch_size % config.grad_accum_steps:
    raise UserError(f"batch_size={config.batch_size} is not divisible by grad_accum_steps={config.grad_accum_steps}")
  micro = config.batch_size // config.grad_accum_steps
  if micro % jax.process_count():
    raise UserError(f"microbatch of {micro} sequences does not split over {jax.process_count()} processes")
  if config.humaneval_every:  # the samples run under the OS sandbox: a machine without it fails now, not mid-run
    from phi1_jax.eval import sandbox

    try:
      sandbox.check(config.humaneval_sandbox)
    except ValueError as e:
      raise UserError(
        f"config.humaneval_every: {e}".replace("--sandbox=guard", "--config.humaneval_sandbox=guard")
      ) from None


def check_workdir(workdir):
  """--workdir must be a folder or not exist yet (its parents are made); a bucket must exist."""
  if paths.is_remote(workdir):
    problem = paths.bucket_problem(workdir)
    if problem:
      raise UserError(f"--workdir {workdir}: {problem}")
    if workdir.is_file():
      raise UserError(f"--workdir {workdir} is a file, not a folder")
    return
  for p in (workdir, *workdir.parents):
    if p.exists():  # the nearest existing one: the run writes there or makes folders in it
      if not p.is_dir():
        raise UserError(f"--workdir {workdir}: {p} is a file, not a folder")
      if not os.access(str(p), os.W_OK):
        raise UserError(f"--workdir {workdir}: {p} is not writable")
      return


def lock_workdir(workdir, log):
  """Holds an fcntl lock on workdir/trainer.lock while this trainer runs (process 0 only: the
  processes of one run share the workdir), so a second trainer there stops in one line instead of
  both writing checkpoints and metrics. The kernel drops the lock when the process dies, so a
  killed run never leaves it stuck. Returns the open file (the lock lasts while it is open)."""
  if jax.process_index() != 0:
    return None
  if paths.is_remote(workdir):
    log(f"warning: {workdir} is in a bucket, which has no lock: start one trainer on it at a time")
    return None
  workdir.mkdir(parents=True, exist_ok=True)
  lock = open(workdir / "trainer.lock", "a+")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.seek(0)
    holder = lock.read().strip() or "another process"
    lock.close()
    raise UserError(
      f"workdir {workdir} is in use by another trainer ({holder}); wait for it to end, "
      f"or stop it, or choose another --workdir"
    ) from None
  lock.seek(0)
  lock.truncate()
  lock.write(f"host {socket.gethostname()}, pid {os.getpid()}\n")
  lock.flush()
  return lock


def out_of_space(e: BaseException) -> bool:
  """Whether `e` is a write that found the disk full (Orbax's writers wrap ENOSPC in a ValueError)."""
  return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


class _DropNoSpaceErrors(py_logging.Filter):
  """Orbax's writer threads log each failed write with its traceback; the trainer reports a full
  disk itself, in one line."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ("No space left on device" in record.getMessage() or (error is not None and out_of_space(error)))


def _quiet_closed_loops(hook):
  """sys.unraisablehook without "Event loop is closed": tensorstore completing the writes of an
  Orbax save that failed (its loop already gone); the failure itself reaches the main thread."""

  def quiet(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)

  return quiet


def folder_bytes(folder) -> int:
  return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _mb(n: int) -> str:
  return f"{n / 1e6:,.1f} MB"


def space_warning(folder, step: int, next_step: int, need: int, free: int, deletes_one: bool) -> str | None:
  """A warning line before saving the checkpoint of `step` (about `need` bytes, as the last one)
  to `folder` with `free` bytes left: this save will not fit, or it leaves no room for the one at
  `next_step` (`deletes_one`: a saved checkpoint then deletes the oldest, keeping free space level).
  None while there is room."""
  if free < need:
    return (
      f"warning: {folder} has {_mb(free)} free, the checkpoint of step {step} needs about {_mb(need)}: "
      f"this save will fail; free space now"
    )
  if free - need < need and not deletes_one:
    return (
      f"warning: {folder} has {_mb(free)} free, room for the checkpoint of step {step} (about {_mb(need)}) "
      f"but not the next at step {next_step}: free space or lower keep_checkpoints before then"
    )
  return None


def end_step_of(config) -> int:
  """Where this invocation stops: run_until_step (a pause) or total_steps."""
  return min(config.run_until_step or config.total_steps, config.total_steps)


def latest_checkpoint_step(workdir) -> int | None:
  """The newest finalized checkpoint's step, read from the folder names: no state is loaded."""
  return max(ocp.utils.checkpoint_steps(paths.absolute(workdir / "checkpoints")), default=None)


def finished_message(config, workdir, end_step: int) -> str | None:
  """One line when the workdir's latest checkpoint already reaches end_step, else None."""
  done = latest_checkpoint_step(workdir)
  if done is None or done < end_step:
    return None
  if done >= config.total_steps:
    return (
      f"run already finished at step {done} (total_steps={config.total_steps}) in {workdir}; "
      f"raise --config.total_steps to continue"
    )
  return (
    f"run already at step {done} (run_until_step={config.run_until_step}) in {workdir}; "
    f"raise --config.run_until_step to continue"
  )


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
  "bucket (gcsfuse) and give the mount's path (README: data in a bucket)"
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


def check_workdir_model(workdir, model_cfg: ModelConfig):
  """Refuses a workdir of a different model shape, touching nothing."""
  saved_model = workdir / "model_config.json"
  if saved_model.exists():
    old = json.loads(saved_model.read_text())
    diff = [f"{k} {old.get(k)} -> {getattr(model_cfg, k)}" for k in SHAPE_FIELDS if old.get(k) != getattr(model_cfg, k)]
    if diff:
      raise UserError(f"workdir {workdir} holds a model of a different shape: {', '.join(diff)}")


def prepare_workdir(workdir, config, model_cfg: ModelConfig, tokenizer: str, log):
  """Writes config snapshots on first use (check_workdir_model first)."""
  workdir.mkdir(parents=True, exist_ok=True)
  saved_model = workdir / "model_config.json"
  if not saved_model.exists() and jax.process_index() == 0:
    saved_model.write_text(json.dumps(dataclasses.asdict(model_cfg), indent=1))
  if jax.process_index() == 0:
    config_json = workdir / "config.json"
    if config_json.exists():
      old = json.loads(config_json.read_text())
      new = json.loads(config.to_json())
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      if changed:
        log(f"resuming with changed config fields: {', '.join(changed)} (config.json keeps the first run's)")
    else:
      config_json.write_text(config.to_json(indent=1))
    tok_src = Path(tokenizer)
    tok_dst = workdir / ("tokenizer" + ("".join(tok_src.suffixes) if tok_src.is_file() else ""))
    if not tok_dst.exists():
      paths.copy(tok_src, tok_dst)


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
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shard)
  return nnx.graphdef(abstract), abstract_state, state_shard, tx, schedule


def create_state(config, tx, state_shard, init_params=None):
  """A fresh state (or one around `init_params`), created already sharded: no device ever holds
  the whole model."""
  model_cfg = model_config_of(config)

  def fresh_state(params):
    if params is None:
      params = nnx.to_pure_dict(nnx.state(Phi(model_cfg, rngs=nnx.Rngs(config.seed)), nnx.Param))
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  return jax.jit(fresh_state, out_shardings=state_shard)(init_params)


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


def init_distributed(config):
  d = config.distributed
  if d.coordinator_address or d.auto:
    kwargs = {}
    if d.coordinator_address:
      kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes, process_id=d.process_id)
    jax.distributed.initialize(**kwargs)


# ----------------------------------------------------------------------------- main loop


def train(config, workdir: str | os.PathLike) -> dict:
  """Runs (or resumes) training; returns the last metrics. Raises UserError on bad input."""
  t_start = time.perf_counter()
  workdir = paths.as_path(workdir)
  is_main = jax.process_index() == 0
  log = (lambda msg: print(msg, flush=True)) if is_main else (lambda msg: None)
  check_workdir(workdir)
  check_config(config)
  model_cfg = model_config_of(config)
  end_step = end_step_of(config)
  finished = finished_message(config, workdir, end_step)
  if finished:  # before any data, state or compilation: a rerun of a finished sweep costs seconds
    log(finished)
    return {"step": latest_checkpoint_step(workdir), "already_finished": True}
  if config.optimizer.warmup_steps >= config.total_steps:
    log(
      f"warning: optimizer.warmup_steps={config.optimizer.warmup_steps} >= total_steps={config.total_steps}: "
      f"the learning rate never reaches optimizer.lr={config.optimizer.lr}"
    )
  sources, eval_sources, tokenizer = resolve_data(config, log)
  local_batch = config.batch_size // jax.process_count()
  eval_sets = make_eval_sets(config, eval_sources, local_batch, log)
  check_workdir_model(workdir, model_cfg)
  workdir_lock = lock_workdir(workdir, log)  # noqa: F841 (held until train returns)
  init_params = init_from_pretrained(config.init_from) if config.init_from else None
  prepare_workdir(workdir, config, model_cfg, tokenizer, log)

  from phi1_jax.data import pipeline

  mesh = sharding.make_mesh(config.mesh)
  graphdef, abstract_state, state_shard, tx, schedule = state_shardings(config, mesh)
  state = create_state(config, tx, state_shard, init_params)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))

  train_ds = pipeline.make_train_dataset(
    sources, batch_size=local_batch, seed=config.seed, shard_index=jax.process_index(), shard_count=jax.process_count()
  )
  train_iter = iter(train_ds)

  import grain

  ckpt_mngr = ocp.CheckpointManager(
    paths.absolute(workdir / "checkpoints"),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True, enable_async_checkpointing=True
    ),
    item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
  )
  latest = ckpt_mngr.latest_step()
  if latest is not None:
    # grain saved one iterator state per process; with another process count there is none for
    # this one, and the position follows from the step (every step reads one global batch).
    same_processes = (
      workdir / "checkpoints" / str(latest) / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    ).exists()
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if same_processes:
      items["data"] = pipeline.checkpoint_args(train_iter, restore=True)
    try:  # to this run's shardings: a checkpoint from another mesh restores resharded
      restored = ckpt_mngr.restore(latest, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:
      raise UserError(
        f"checkpoint {workdir}/checkpoints/{latest} does not match this config: {str(e).splitlines()[0]}"
      ) from None
    state = restored["state"]
    if not same_processes:
      pipeline.seek(train_iter, int(state["step"]), local_batch)
    log(
      f"resumed from {workdir}/checkpoints/{latest}"
      + (
        ""
        if same_processes
        else f" (saved by another number of processes: data position from step {int(state['step'])})"
      )
    )
  start_step = int(state["step"])

  G = config.grad_accum_steps
  # All processes must stop after the same step, or one waits in save() for a peer that waits in
  # the next step's collectives, until SIGKILL. They see a signal at different times (each node's
  # slurmd signals its own tasks), so with several processes each passes its flag into the step,
  # and all stop once a step's metrics carry any flag: they read the same metrics at the same point
  # of the loop, so they agree, with no host sync beyond that read. (An all-gather of the flags
  # would be a second blocking sync per step; jax's preemption sync manager catches SIGTERM in
  # C++, which the Python handler below replaces, and never sees SIGINT.) One process stops at
  # the step where it sees the signal, as before.
  multiprocess = jax.process_count() > 1
  train_step = jit_train_step(graphdef, tx, config, mesh, state_shard, stop_flags=multiprocess)
  eval_step = jax.jit(sharding.on_mesh(make_eval_step(graphdef, config), mesh))

  def next_batch():
    tokens = np.asarray(next(train_iter)["tokens"], np.int32)
    tokens_GxBxL1 = tokens.reshape(G, local_batch // G, tokens.shape[-1])
    return sharding.global_batch(tokens_GxBxL1, mesh, leading_dims=1)

  def run_eval():
    """eval_loss; over several sources, their losses weighted as the mixture, each also logged."""
    losses = {}
    for name, _, batches in eval_sets:
      total, count = 0.0, 0
      for batch in batches:
        t, c = eval_step(state["params"], sharding.global_batch(np.asarray(batch["tokens"], np.int32), mesh))
        total, count = total + float(t), count + int(c)
      losses[name] = total / count
    if len(eval_sets) == 1:
      return {"eval_loss": losses[eval_sets[0][0]]}
    weight = sum(w for _, w, _ in eval_sets)
    return {
      "eval_loss": sum(w * losses[name] for name, w, _ in eval_sets) / weight,
      **{f"eval_loss/{name}": loss for name, loss in losses.items()},
    }

  ckpt_dir = workdir / "checkpoints"
  py_logging.getLogger("absl").addFilter(_DropNoSpaceErrors())
  sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
  saving = {}  # the save in flight (async): its step, and the space it needed and found

  def disk_full() -> DiskFull:
    good = latest_checkpoint_step(workdir)
    space = f": it needs about {_mb(saving['need'])}, {_mb(saving['free'])} was free" if "need" in saving else ""
    return DiskFull(
      f"no space left on device for the checkpoint of step {saving['step']} in {ckpt_dir}{space}; "
      f"the last good checkpoint is {ckpt_dir / str(good) if good is not None else 'none'}; "
      f"free space and rerun the same command to resume"
    )

  def finish_saves():
    """Waits for the save in flight; a full disk becomes DiskFull naming its step."""
    try:
      ckpt_mngr.wait_until_finished()
    except Exception as e:
      if saving and out_of_space(e):
        raise disk_full() from None
      raise
    saving.clear()

  def save(step, force=False):
    finish_saves()  # Orbax waits for the last save anyway; a failure of it is named here
    saving.update(step=step)
    if is_main and not paths.is_remote(workdir):
      good = latest_checkpoint_step(workdir)
      need = folder_bytes(ckpt_dir / str(good)) if good is not None else sum(x.nbytes for x in jax.tree.leaves(state))
      free = shutil.disk_usage(ckpt_dir).free
      warning = space_warning(
        ckpt_dir,
        step,
        step + config.checkpoint_every,
        need,
        free,
        deletes_one=len(ocp.utils.checkpoint_steps(ckpt_dir)) >= config.keep_checkpoints > 0,
      )
      if warning:
        log(warning)
      saving.update(need=need, free=free)
    try:
      ckpt_mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=pipeline.checkpoint_args(train_iter)),
        force=force,
      )
    except Exception as e:
      if out_of_space(e):
        raise disk_full() from None
      raise

  stop_signal = []
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

  tokens_per_step = config.batch_size * config.seq_len
  flops_step = flops_per_token(model_cfg, config.seq_len) * tokens_per_step
  peak = config.peak_flops_per_device or peak_flops(jax.devices()[0])
  writer = MetricWriter(workdir, enabled=is_main)
  progress = Progress(start_step, end_step, log)
  log(
    f"model: {n_params:,} parameters; mesh {dict(mesh.shape)}; {jax.device_count()} {jax.devices()[0].platform} devices; "
    f"{config.batch_size} x {config.seq_len} tokens per step; steps {start_step} -> {end_step}"
  )

  last, last_eval = {}, None
  stop_agreed = False  # a step's metrics carried some process's stop flag

  def read(pending) -> dict:
    nonlocal stop_agreed
    values = _read(pending, schedule)
    stop_agreed |= values.pop("stop", 0.0) > 0
    return values

  def stopping() -> bool:
    return stop_agreed if multiprocess else bool(stop_signal)

  saved_step = latest  # the newest checkpoint on disk: never saved twice
  out_of_disk = False
  pending = None  # (step, metrics on device): read one step late so the next step is already dispatched
  window_start, window_steps = time.perf_counter(), 0
  step = start_step
  try:
    while step < end_step and not stopping():
      batch = next_batch()
      stop_arg = (stop_flags_array(bool(stop_signal), mesh),) if multiprocess else ()
      state, metrics = train_step(state, batch, *stop_arg)
      step += 1
      window_steps += 1
      if pending is not None:
        last = read(pending)
      pending = (step, metrics)
      # eval_every and the HumanEval cadences count steps on their own; a step they fall on is logged too
      evaluating = step % config.eval_every == 0 or step == end_step
      if step % config.log_every == 0 or evaluating or any(humaneval_due(config, step)):
        last = read(pending)
        pending = None
        elapsed = time.perf_counter() - window_start
        tps = tokens_per_step * window_steps / elapsed
        last["tokens_per_sec"] = tps
        last["mfu"] = flops_step * window_steps / elapsed / (peak * jax.device_count()) if peak else None
        window_start, window_steps = time.perf_counter(), 0
        if evaluating:
          last.update(run_eval())
          last_eval = (step, last["eval_loss"])
        last.update(_humaneval_metrics(config, step, graphdef, state, tokenizer))
        writer.write(step, last)
        progress.update(step, last)
      if step % config.checkpoint_every == 0 and step != end_step:
        if pending is not None:  # a checkpoint only after its step's loss and gradient are finite
          last = read(pending)
          pending = None
        save(step)
        saved_step = step
        writer.sync()  # a bucket's metrics reach at least the checkpoint's step
    if pending is not None:
      last = read(pending)
    if step != saved_step:  # e.g. a signal right after a checkpoint_every save
      save(step, force=True)
    if stopping():
      by = f"signal {signal.Signals(stop_signal[0]).name}" if stop_signal else "a signal to another process"
      log(f"stopped by {by} at step {step}; checkpoint saved")
  except FloatingPointError as e:
    log(f"error: {e}; the last good checkpoint is {ckpt_mngr.latest_step()}")
    raise
  except DiskFull:
    out_of_disk = True
    raise
  finally:
    try:
      if not out_of_disk:  # a failed save, reported, would raise again here
        finish_saves()
        ckpt_mngr.close()
    finally:
      writer.close()
  last["step"] = step
  log(summary_line(config, workdir, step, end_step, last, last_eval, time.perf_counter() - t_start))
  return last


def summary_line(config, workdir, step: int, end_step: int, last: dict, last_eval, seconds: float) -> str:
  """What a finished (or stopped) run reached, in one line."""
  state = "finished" if step >= config.total_steps else "paused" if step >= end_step else "stopped"
  parts = [f"{state} at step {step}/{config.total_steps} in {_duration(seconds)}"]
  if "loss" in last:
    parts.append(f"train loss {last['loss']:.4f}")
  if last_eval is not None:
    parts.append(f"eval loss {last_eval[1]:.4f}" + ("" if last_eval[0] == step else f" (step {last_eval[0]})"))
  parts.append(f"{step * config.batch_size * config.seq_len:,} tokens seen")
  parts.append(f"checkpoint {workdir / 'checkpoints' / str(step)}")
  return "summary: " + " | ".join(parts)


def _read(pending, schedule) -> dict:
  step, metrics = pending
  values = {k: float(v) for k, v in jax.device_get(metrics).items()}
  for name in ("loss", "grad_norm"):
    if not math.isfinite(values[name]):
      raise FloatingPointError(f"{name} is {values[name]} at step {step}")
  values["lr"] = float(schedule(step - 1))
  return values


def humaneval_due(config, step) -> tuple[bool, bool]:
  """(pass@1 due, canonical loss due) at `step`."""
  return (
    bool(config.humaneval_every) and step % config.humaneval_every == 0,
    bool(config.humaneval_loss_every) and step % config.humaneval_loss_every == 0,
  )


def _humaneval_metrics(config, step, graphdef, state, tokenizer_path) -> dict:
  due_pass, due_loss = humaneval_due(config, step)
  if not (due_pass or due_loss):
    return {}
  from phi1_jax.data.tokenizer import load_tokenizer
  from phi1_jax.eval import harness

  model = nnx.merge(graphdef, state["params"])
  tokenizer = load_tokenizer(tokenizer_path)
  limit = config.humaneval_limit or None
  out = {}
  if due_pass:
    scores = harness.humaneval_pass_at_1(model, tokenizer, limit=limit, sandbox=config.humaneval_sandbox)
    out.update({f"humaneval_{k}": v for k, v in scores.items()})
  if due_loss:
    out["humaneval_canonical_loss"] = harness.humaneval_canonical_loss(
      model, tokenizer, limit=limit, seq_len=config.seq_len
    )
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None or _WORKDIR.value is None:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  config = _CONFIG.value
  try:
    config.distributed  # ml_collections defers a config file's load error to the first access
  except OSError as e:
    print(f"error: --config: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    distributed = config.distributed.coordinator_address or config.distributed.auto
    if (
      distributed
      and config.data.mixture.strip() == "stdlib"
      and not finished_message(config, paths.as_path(_WORKDIR.value), end_step_of(config))
    ):
      # Build shared data before joining the other processes: one builds while the rest wait on a
      # file lock, and no collective or coordination timeout runs meanwhile.
      ensure_stdlib(config)
    init_distributed(config)
    train(config, _WORKDIR.value)
    # Saved and done: a late SIGTERM (another node's, a launcher stopping the rest) must not make
    # jax's shutdown, which waits for the other processes, end in a failure exit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except FloatingPointError:
    sys.exit(1)
  except DiskFull as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # Orbax's writer threads and event loops, cut short, print pages at interpreter exit


def parse_flags(argv):
  """absl flag parsing with a one-line error (a bad override names the key and the problem)."""
  path = config_path(argv)
  if path is not None and not Path(path).is_file():  # ml_collections would bury this in two tracebacks
    print(
      f"error: --config {path}: " + ("a folder, not a config file" if Path(path).is_dir() else "no such file"),
      file=sys.stderr,
    )
    sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # ml_collections: an override key the config lacks
    text = str(e).encode().decode("unicode_escape")
    key = re.search(r"'(\w+)'", text)
    hint = re.search(r'Did you mean "(\w+)"', text)
    print(
      f"error: unknown config key {key.group(1) if key else text!r} in the overrides"
      + (f" (did you mean {hint.group(1)!r}?)" if hint else ""),
      file=sys.stderr,
    )
    sys.exit(2)


def config_path(argv) -> str | None:
  """The file named by --config in argv ("--config=F", "--config F", "F:arg" forms), or None."""
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1].split(":", 1)[0]
  return None
