"""The run folder: checks before a run writes there, the lock against a second trainer, the config
and tokenizer snapshots, and whether the run there has already finished."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from phi1_jax import paths
from phi1_jax.cli import UserError
from phi1_jax.model.config import ModelConfig


SHAPE_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "head_dim", "mlp_dim")


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
