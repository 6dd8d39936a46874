"""Checkpoints of a run: the Orbax manager of workdir/checkpoints/<step>/{state,data}, resuming to
this run's shardings (from any mesh or process count), asynchronous saves, and a full disk reported
in one line with the last good checkpoint."""

from __future__ import annotations

import errno
import logging as py_logging
import shutil
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from phi1_jax import paths
from phi1_jax.cli import UserError
from phi1_jax.train.workdir import latest_checkpoint_step


class DiskFull(Exception):
  """A checkpoint did not fit on its filesystem: reported as one line, exit code 1."""


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


class Checkpointer:
  """Saves and restores {state, data iterator} in workdir/checkpoints, at most one save in flight.

  A failed save (a full disk) raises DiskFull naming its step, at the save or when it is waited for.
  """

  def __init__(self, workdir, config, train_iter, log):
    import grain

    self.workdir, self.config, self.train_iter, self.log = workdir, config, train_iter, log
    self.folder = workdir / "checkpoints"
    self.manager = ocp.CheckpointManager(
      paths.absolute(self.folder),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True, enable_async_checkpointing=True
      ),
      item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
    )
    py_logging.getLogger("absl").addFilter(_DropNoSpaceErrors())
    sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
    self.saving = {}  # the save in flight (async): its step, and the space it needed and found

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, abstract_state, local_batch: int):
    """The latest checkpoint's state, to this run's shardings, with the data iterator moved to its
    position; None where there is none. A checkpoint from another mesh restores resharded."""
    from phi1_jax.data import pipeline

    latest = self.manager.latest_step()
    if latest is None:
      return None
    # grain saved one iterator state per process; with another process count there is none for
    # this one, and the position follows from the step (every step reads one global batch).
    same_processes = (
      self.folder / str(latest) / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    ).exists()
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if same_processes:
      items["data"] = pipeline.checkpoint_args(self.train_iter, restore=True)
    try:
      restored = self.manager.restore(latest, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:
      reason = str(e).splitlines()[0]
      if "tree structures do not match" in reason:  # the model's shape was checked before: the state's other parts
        reason = "its state holds other parts (spike_guard.factor or optimizer.grad_clip turned on or off since?)"
      raise UserError(f"checkpoint {self.workdir}/checkpoints/{latest} does not match this config: {reason}") from None
    state = restored["state"]
    if not same_processes:
      pipeline.seek(self.train_iter, int(state["step"]), local_batch)
    self.log(
      f"resumed from {self.workdir}/checkpoints/{latest}"
      + (
        ""
        if same_processes
        else f" (saved by another number of processes: data position from step {int(state['step'])})"
      )
    )
    return state

  def save(self, step: int, state, force: bool = False):
    """Starts saving `state` (and the data iterator's position) as the checkpoint of `step`."""
    from phi1_jax.data import pipeline

    self.finish()  # Orbax waits for the last save anyway; a failure of it is named here
    self.saving.update(step=step)
    if jax.process_index() == 0 and not paths.is_remote(self.workdir):
      good = latest_checkpoint_step(self.workdir)
      need = (
        folder_bytes(self.folder / str(good)) if good is not None else sum(x.nbytes for x in jax.tree.leaves(state))
      )
      free = shutil.disk_usage(self.folder).free
      warning = space_warning(
        self.folder,
        step,
        step + self.config.checkpoint_every,
        need,
        free,
        deletes_one=len(ocp.utils.checkpoint_steps(self.folder)) >= self.config.keep_checkpoints > 0,
      )
      if warning:
        self.log(warning)
      self.saving.update(need=need, free=free)
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=pipeline.checkpoint_args(self.train_iter)),
        force=force,
      )
    except Exception as e:
      if out_of_space(e):
        raise self.disk_full() from None
      raise

  def finish(self):
    """Waits for the save in flight; a full disk becomes DiskFull naming its step."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      if self.saving and out_of_space(e):
        raise self.disk_full() from None
      raise
    self.saving.clear()

  def close(self):
    self.finish()
    self.manager.close()

  def disk_full(self) -> DiskFull:
    good = latest_checkpoint_step(self.workdir)
    saving = self.saving
    space = f": it needs about {_mb(saving['need'])}, {_mb(saving['free'])} was free" if "need" in saving else ""
    return DiskFull(
      f"no space left on device for the checkpoint of step {saving['step']} in {self.folder}{space}; "
      f"the last good checkpoint is {self.folder / str(good) if good is not None else 'none'}; "
      f"free space and rerun the same command to resume"
    )
