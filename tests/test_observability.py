"""What a run shows besides its loss, and what it skips: the profiler window's trace, read back with
jax's own xplane reader and TensorBoard's profile plugin (xprof) loader; the spike guard's skips
across a SIGKILL and a resume."""

import glob
import gzip
import json

import jax
import numpy as np
import pytest

from helpers import run_module
from test_train import final_params, losses, metric_rows, sigkill_once_saved, train_args


def step_annotations(xplane_path) -> list[int]:
  """The step numbers of the trainer's "train" step annotations in one .xplane.pb."""
  profile = jax.profiler.ProfileData.from_file(xplane_path)
  return sorted(
    dict(event.stats)["step_num"]
    for plane in profile.planes
    for line in plane.lines
    for event in line.events
    if event.name == "train"
  )


@pytest.mark.slow
def test_profile_window_traces_exactly_the_asked_steps(tmp_path, stdlib_cache):
  window = ["--config.total_steps=6", "--config.profile.start_step=3", "--config.profile.steps=2"]
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, *window))
  assert out.returncode == 0, out.stderr[-3000:]
  assert [r["step"] for r in metric_rows(tmp_path)] == list(range(1, 7))  # the run itself is unchanged
  (xplane,) = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert step_annotations(xplane) == [3, 4]
  with gzip.open(glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "perfetto_trace.json.gz"))[0]) as f:
    perfetto = json.load(f)
  assert sorted(int(e["args"]["step_num"]) for e in perfetto["traceEvents"] if e.get("name") == "train") == [3, 4]

  # TensorBoard's profile plugin (xprof, in the test extra) turns it into its trace viewer's JSON
  from xprof.convert import raw_to_tool_data

  assert "trace_viewer@" in raw_to_tool_data.xspace_to_tool_names([xplane])
  data, content_type = raw_to_tool_data.xspace_to_tool_data([xplane], "trace_viewer", {})
  assert content_type == "application/json"
  events = json.loads(data)["traceEvents"]
  assert sorted(int(e["args"]["step_num"]) for e in events if e.get("name", "").startswith("train ")) == [3, 4]


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.profile.start_step=0", "config.profile: start_step=0 must be >= 1"),
    ("--config.spike_guard.window=0", "config.spike_guard: factor=0.0 must be >= 0 (0: off) and window=0 >= 1"),
  ],
)
def test_profile_and_spike_guard_config_are_checked(tmp_path, override, message):
  # refused before any data is read: the data cache is never built
  out = run_module("phi1_jax.train", *train_args(tmp_path / "run", tmp_path / "cache", override))
  assert out.returncode == 2
  assert f"train: error: {message}" in out.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_spike_guard_resumes_exactly_after_sigkill(tmp_path, stdlib_cache):
  """(The step-5 eval compiles after the checkpoint, so the run is still going when it is killed.)
  With the guard on (factor 1 over 2 steps: the nearly flat losses of warmup spike often), 8 steps
  straight == 4 steps, SIGKILL after the step-4 checkpoint, then resume to 8: same losses, same skips."""
  steps = ["--config.total_steps=8", "--config.checkpoint_every=4", "--config.eval_every=5"]
  steps += ["--config.spike_guard.factor=1.0", "--config.spike_guard.window=2"]
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  out = run_module("phi1_jax.train", *train_args(straight, stdlib_cache, *steps))
  assert out.returncode == 0, out.stderr[-3000:]
  skipped = {r["step"]: r["skipped_steps"] for r in metric_rows(straight)}
  assert 0 < skipped[4] < skipped[8], skipped  # skips before the checkpoint and after it

  sigkill_once_saved(train_args(killed, stdlib_cache, *steps), killed / "checkpoints" / "4" / "state")
  out = run_module("phi1_jax.train", *train_args(killed, stdlib_cache, *steps))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from" in out.stdout
  assert losses(killed) == losses(straight)
  assert {r["step"]: r["skipped_steps"] for r in metric_rows(killed)} == skipped
  for x, y in zip(jax.tree.leaves(final_params(straight, 8)), jax.tree.leaves(final_params(killed, 8)), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))

  # resuming it with the guard off: its checkpoint holds the guard's statistics, refused in one line
  off = [a for a in train_args(killed, stdlib_cache, *steps) if not a.startswith("--config.spike_guard")]
  out = run_module("phi1_jax.train", *off, "--config.total_steps=10")
  assert out.returncode == 2
  assert "spike_guard.factor or optimizer.grad_clip turned on or off" in out.stderr.strip().splitlines()[-1]
