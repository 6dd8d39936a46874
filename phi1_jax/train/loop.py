r"""The training loop: `train(config, workdir)` checks everything, sets up a `Trainer`, then repeats
step, log (and evaluate), checkpoint until the end step, a signal or a non-finite loss.

A workdir that holds checkpoints resumes from the latest one; the data iterator, optimizer and step
come back with it, and dropout keys are `fold_in(seed, step)`, so a resumed run continues bit for bit.

Workdir: config.json, model_config.json, the tokenizer, metrics.jsonl, tb/ (TensorBoard),
checkpoints/<step>/{state,data}, profile/ (the profiler window's trace, if asked), wandb_run.json and
wandb/ (Weights & Biases, if asked).
"""

from __future__ import annotations

import math
import os
import signal
import time

import jax

from phi1_jax import paths
from phi1_jax.model import sharding
from phi1_jax.train import checks, inputs, workdir as workdirs
from phi1_jax.train.checkpoints import Checkpointer, DiskFull
from phi1_jax.train.evaluate import eval_losses, humaneval_due, humaneval_metrics
from phi1_jax.train.flops import flops_per_token, peak_flops
from phi1_jax.train.metrics import MetricWriter, Progress, duration
from phi1_jax.train.profile import ProfileWindow
from phi1_jax.train.state import create_state, init_from_pretrained, state_shardings
from phi1_jax.train.step import jit_train_step, make_eval_step, stop_flags_array


def train(config, workdir: str | os.PathLike) -> dict:
  """Runs (or resumes) training; returns the last metrics. Raises UserError on bad input."""
  t_start = time.perf_counter()
  workdir = paths.as_path(workdir)
  log = (lambda msg: print(msg, flush=True)) if jax.process_index() == 0 else (lambda msg: None)
  workdirs.check_workdir(workdir)
  checks.check_config(config)
  model_cfg = checks.model_config_of(config)
  end_step = checks.end_step_of(config)
  finished = workdirs.finished_message(config, workdir, end_step)
  if finished:  # before any data, state or compilation: a rerun of a finished sweep costs seconds
    log(finished)
    return {"step": workdirs.latest_checkpoint_step(workdir), "already_finished": True}
  if config.optimizer.warmup_steps >= config.total_steps:
    log(
      f"warning: optimizer.warmup_steps={config.optimizer.warmup_steps} >= total_steps={config.total_steps}: "
      f"the learning rate never reaches optimizer.lr={config.optimizer.lr}"
    )
  sources, eval_sources, tokenizer = inputs.resolve_data(config, log)
  local_batch = config.batch_size // jax.process_count()
  eval_sets = inputs.make_eval_sets(config, eval_sources, local_batch, log)
  workdirs.check_workdir_model(workdir, model_cfg)
  workdir_lock = workdirs.lock_workdir(workdir, log)  # noqa: F841 (held until train returns)
  init_params = init_from_pretrained(config.init_from) if config.init_from else None
  workdirs.prepare_workdir(workdir, config, model_cfg, tokenizer, log)

  trainer = Trainer(config, workdir, log, sources, eval_sets, tokenizer, init_params)
  last = trainer.run()
  log(summary_line(config, workdir, trainer.step, end_step, last, trainer.last_eval, time.perf_counter() - t_start))
  return last


class Trainer:
  """The state of one invocation of the trainer: the model state on the mesh, the data iterator, the
  checkpoints and metrics writers, and the loop's own counters. `run` is the loop; each of its parts
  (`train_step`, `log_step`, `checkpoint`) is a method, the place to hook into."""

  def __init__(self, config, workdir, log, sources, eval_sets, tokenizer: str, init_params=None):
    from phi1_jax.data import pipeline

    self.config, self.workdir, self.log, self.eval_sets, self.tokenizer = config, workdir, log, eval_sets, tokenizer
    self.end_step = checks.end_step_of(config)
    self.local_batch = config.batch_size // jax.process_count()
    self.mesh = mesh = sharding.make_mesh(config.mesh)
    self.graphdef, abstract_state, state_shard, tx, self.schedule = state_shardings(config, mesh)
    self.state = create_state(config, tx, state_shard, init_params)
    n_params = sum(x.size for x in jax.tree.leaves(self.state["params"]))
    self.train_iter = iter(
      pipeline.make_train_dataset(
        sources,
        batch_size=self.local_batch,
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
      )
    )
    self.checkpointer = Checkpointer(workdir, config, self.train_iter, log)
    self.saved_step = self.checkpointer.latest_step()  # the newest checkpoint on disk: never saved twice
    self.state = self.checkpointer.restore(abstract_state, self.local_batch) or self.state
    self.step = start_step = int(self.state["step"])

    # All processes must stop after the same step, or one waits in save() for a peer that waits in
    # the next step's collectives, until SIGKILL. They see a signal at different times (each node's
    # slurmd signals its own tasks), so with several processes each passes its flag into the step,
    # and all stop once a step's metrics carry any flag: they read the same metrics at the same point
    # of the loop, so they agree, with no host sync beyond that read. (An all-gather of the flags
    # would be a second blocking sync per step; jax's preemption sync manager catches SIGTERM in
    # C++, which the Python handler below replaces, and never sees SIGINT.) One process stops at
    # the step where it sees the signal, as before.
    self.multiprocess = jax.process_count() > 1
    self.jitted_train_step = jit_train_step(self.graphdef, tx, config, mesh, state_shard, stop_flags=self.multiprocess)
    self.eval_step = jax.jit(sharding.on_mesh(make_eval_step(self.graphdef, config), mesh))
    self.stop_signals = []
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, lambda signum, frame: self.stop_signals.append(signum))
    self.stop_agreed = False  # a step's metrics carried some process's stop flag

    self.tokens_per_step = config.batch_size * config.seq_len
    self.flops_per_step = flops_per_token(checks.model_config_of(config), config.seq_len) * self.tokens_per_step
    self.peak = config.peak_flops_per_device or peak_flops(jax.devices()[0])
    self.writer = MetricWriter(workdir, enabled=jax.process_index() == 0, config=config)
    self.progress = Progress(start_step, self.end_step, log)
    self.profile = ProfileWindow(config, workdir, start_step)
    log(
      f"model: {n_params:,} parameters; mesh {dict(mesh.shape)}; {jax.device_count()} {jax.devices()[0].platform} "
      f"devices; {config.batch_size} x {config.seq_len} tokens per step; steps {start_step} -> {self.end_step}"
    )
    self.last, self.last_eval = {}, None  # the newest metrics read; (step, eval_loss) of the newest eval
    self.pending = None  # (step, metrics on device): read one step late so the next step is already dispatched
    self.window_start, self.window_steps = time.perf_counter(), 0  # throughput since the last logged step

  def run(self) -> dict:
    """Trains from the restored step to the end step (or a signal); returns the last metrics."""
    config = self.config
    out_of_disk = False
    try:
      while self.step < self.end_step and not self.stopping():
        self.train_step()
        # eval_every and the HumanEval cadences count steps on their own; a step they fall on is logged too
        evaluating = self.step % config.eval_every == 0 or self.step == self.end_step
        if self.step % config.log_every == 0 or evaluating or any(humaneval_due(config, self.step)):
          self.log_step(evaluating)
        if self.step % config.checkpoint_every == 0 and self.step != self.end_step:
          self.checkpoint()
          self.writer.sync()  # a bucket's metrics reach at least the checkpoint's step
      self.read_pending()
      if self.step != self.saved_step:  # e.g. a signal right after a checkpoint_every save
        self.checkpoint(force=True)
      if self.stopping():
        by = (
          f"signal {signal.Signals(self.stop_signals[0]).name}" if self.stop_signals else "a signal to another process"
        )
        self.log(f"stopped by {by} at step {self.step}; checkpoint saved")
    except FloatingPointError as e:
      self.log(f"error: {e}; the last good checkpoint is {self.checkpointer.latest_step()}")
      raise
    except DiskFull:
      out_of_disk = True
      raise
    finally:
      self.profile.stop()
      try:
        if not out_of_disk:  # a failed save, reported, would raise again here
          self.checkpointer.close()
      finally:
        self.writer.close()
    return {**self.last, "step": self.step}

  def train_step(self):
    """Dispatches one step, then reads the previous step's metrics while this one runs."""
    batch = inputs.next_global_batch(self.train_iter, self.config.grad_accum_steps, self.local_batch, self.mesh)
    stop_arg = (stop_flags_array(bool(self.stop_signals), self.mesh),) if self.multiprocess else ()
    with self.profile.annotate(self.step + 1):
      self.state, metrics = self.jitted_train_step(self.state, batch, *stop_arg)
    self.step += 1
    self.profile.after(self.step, self.state)
    self.window_steps += 1
    self.read_pending()
    self.pending = (self.step, metrics)

  def log_step(self, evaluating: bool):
    """Writes this step's metrics (with throughput, MFU, and the evaluations due) and the progress line."""
    self.read_pending()
    elapsed = time.perf_counter() - self.window_start
    self.last["tokens_per_sec"] = self.tokens_per_step * self.window_steps / elapsed
    self.last["mfu"] = (
      self.flops_per_step * self.window_steps / elapsed / (self.peak * jax.device_count()) if self.peak else None
    )
    self.window_start, self.window_steps = time.perf_counter(), 0
    if evaluating:
      self.last.update(eval_losses(self.eval_step, self.state["params"], self.eval_sets, self.mesh))
      self.last_eval = (self.step, self.last["eval_loss"])
    self.last.update(humaneval_metrics(self.config, self.step, self.graphdef, self.state, self.tokenizer))
    self.writer.write(self.step, self.last)
    self.progress.update(self.step, self.last)

  def checkpoint(self, force: bool = False):
    """Saves this step, once its loss and gradient are read and finite."""
    self.read_pending()
    self.checkpointer.save(self.step, self.state, force=force)
    self.saved_step = self.step

  def read_pending(self):
    """Reads the dispatched step's metrics to the host (waiting for it); a non-finite loss or gradient
    norm raises FloatingPointError."""
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    for name in ("loss", "grad_norm"):
      if not math.isfinite(values[name]):
        raise FloatingPointError(f"{name} is {values[name]} at step {step}")
    values["lr"] = float(self.schedule(step - 1))
    self.stop_agreed |= values.pop("stop", 0.0) > 0
    self.last = values

  def stopping(self) -> bool:
    return self.stop_agreed if self.multiprocess else bool(self.stop_signals)


def summary_line(config, workdir, step: int, end_step: int, last: dict, last_eval, seconds: float) -> str:
  """What a finished (or stopped) run reached, in one line."""
  state = "finished" if step >= config.total_steps else "paused" if step >= end_step else "stopped"
  parts = [f"{state} at step {step}/{config.total_steps} in {duration(seconds)}"]
  if "loss" in last:
    parts.append(f"train loss {last['loss']:.4f}")
  if last_eval is not None:
    parts.append(f"eval loss {last_eval[1]:.4f}" + ("" if last_eval[0] == step else f" (step {last_eval[0]})"))
  parts.append(f"{step * config.batch_size * config.seq_len:,} tokens seen")
  parts.append(f"checkpoint {workdir / 'checkpoints' / str(step)}")
  return "summary: " + " | ".join(parts)
