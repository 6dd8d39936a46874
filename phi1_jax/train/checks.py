"""The trainer's checks of its config before any data, state or compilation, and the ModelConfig it
resolves to (what a finetuning config leaves unset comes from its init_from checkpoint)."""

from __future__ import annotations

import importlib.util

import jax

from phi1_jax import paths
from phi1_jax.cli import UserError
from phi1_jax.model.config import ModelConfig


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
  if config.profile.steps < 0 or config.profile.start_step < 1:
    raise UserError(
      f"config.profile: start_step={config.profile.start_step} must be >= 1 (steps are numbered from 1) "
      f"and steps={config.profile.steps} >= 0"
    )
  if config.spike_guard.factor < 0 or config.spike_guard.window < 1:
    raise UserError(
      f"config.spike_guard: factor={config.spike_guard.factor} must be >= 0 (0: off) "
      f"and window={config.spike_guard.window} >= 1"
    )
  if config.wandb.project and importlib.util.find_spec("wandb") is None:
    raise UserError("--config.wandb.project needs the wandb package (pip install 'phi1_jax[wandb]')")
  if config.wandb.mode not in ("", "online", "offline", "disabled"):
    raise UserError(f"config.wandb.mode={config.wandb.mode!r}: use online, offline or disabled (or leave it unset)")
  if config.humaneval_every:  # the samples run under the OS sandbox: a machine without it fails now, not mid-run
    from phi1_jax.eval import sandbox

    try:
      sandbox.check(config.humaneval_sandbox)
    except ValueError as e:
      raise UserError(
        f"config.humaneval_every: {e}".replace("--sandbox=guard", "--config.humaneval_sandbox=guard")
      ) from None


def end_step_of(config) -> int:
  """Where this invocation stops: run_until_step (a pause) or total_steps."""
  return min(config.run_until_step or config.total_steps, config.total_steps)
