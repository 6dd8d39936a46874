"""The profiler window: a `jax.profiler` trace of the steps `profile.start_step` to
`start_step + steps - 1` (numbered as logged) in `workdir/profile/`: an .xplane.pb that
TensorBoard's profile plugin (xprof) opens, and beside it a perfetto_trace.json.gz for Perfetto.
Each step is a `StepTraceAnnotation("train", step_num=step)`, so the plugin's step views split the
trace by training step."""

from __future__ import annotations

import contextlib

import jax


class ProfileWindow:
  """Starts the trace before the window's first step is dispatched and stops it once its last step
  has finished on the device (the one wait it adds, at the window's end). Off when `profile.steps`
  is 0, on a process other than `profile.process` (-1: every process traces), and for a window that
  a resumed run has already passed."""

  def __init__(self, config, workdir, start_step: int):
    cfg = config.profile
    self.first, self.last = cfg.start_step, cfg.start_step + cfg.steps - 1
    on_this_process = cfg.process in (-1, jax.process_index())
    self.enabled = cfg.steps > 0 and on_this_process and start_step < self.first
    self.logdir = str(workdir / "profile")
    self.tracing = False

  def annotate(self, step: int):
    """The context to dispatch `step` in: a step annotation inside the window, else nothing."""
    if not self.enabled or not self.first <= step <= self.last:
      return contextlib.nullcontext()
    if not self.tracing:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self.tracing = True
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, state):
    """Called once `step` is dispatched: at the window's last step, waits for it and stops the trace."""
    if self.tracing and step >= self.last:
      self.stop(state)

  def stop(self, state=None):
    """Ends the trace (a run that stops inside the window keeps what it traced)."""
    if self.tracing:
      if state is not None:
        jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.tracing = False
      self.enabled = False
