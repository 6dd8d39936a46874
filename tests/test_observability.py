"""What a run shows besides its loss: the profiler window's trace, read back with jax's own xplane
reader and TensorBoard's profile plugin (xprof) loader."""

import glob
import gzip
import json

import jax
import pytest

from conftest import run_module
from test_train import metric_rows, train_args


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


def test_profile_config_is_checked(tmp_path, stdlib_cache):
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, "--config.profile.start_step=0"))
  assert out.returncode == 2
  assert "train: error: config.profile: start_step=0 must be >= 1" in out.stderr.strip().splitlines()[-1]
