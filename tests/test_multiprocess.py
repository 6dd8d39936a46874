"""Many processes and changing meshes, with the trainer CLI in real subprocesses, real collectives
(gloo) and real Orbax files.

- Two processes under launch/local.py (metrics from process 0 only, one multi-host checkpoint,
  per-process data iterator state) see SIGTERM at different steps, as two nodes' slurmds signal
  their own tasks: both stop after the same step and save it; one process resumes from it and
  matches a one-process run (the data order does not depend on the process count).
- The trainer saves on 8 devices with FSDP and resumes on 2 devices, matching a 4-device run.
- launch/local.py: two processes from an empty data cache, and a failing process stops the others.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, assert_same_losses, metric_rows, repo_env, wait_for

pytestmark = pytest.mark.slow


def _run(argv, devices=1, timeout=600):
  proc = subprocess.run(argv, cwd=REPO, env=repo_env(devices), capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"{' '.join(map(str, argv))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc


def _max_rel_err(params, ref) -> float:
  """Largest per-parameter relative error (L2), k_bias aside: its gradient is float noise (a key
  bias outside the rotary dims adds a constant to a query's logits, which softmax ignores), and
  Adam scales that noise up to +-lr, so it differs between any two reduction orders."""
  import jax

  errs = jax.tree_util.tree_leaves_with_path(
    jax.tree.map(
      lambda a, b: float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(np.asarray(b)), 1e-30)),
      params,
      ref,
    )
  )
  return max(e for path, e in errs if "k_bias" not in jax.tree_util.keystr(path))


# ----------------------------------------------------------------------------- the trainer CLI


@pytest.fixture(scope="module")
def cli_flags(stdlib_cache):
  return [
    "-m",
    "phi1_jax.train",
    "--config=configs/tiny.py",
    "--config.total_steps=6",
    "--config.checkpoint_every=3",
    "--config.batch_size=8",
    "--config.seq_len=128",
    "--config.model.n_layers=2",
    "--config.log_every=1",
    "--config.eval_every=1000",
    "--config.eval_batches=1",
    "--config.optimizer.warmup_steps=1",
    f"--config.data.cache_dir={stdlib_cache}",
  ]


def _final_params(workdir: Path, step: int = 6, n_layers: int = 2):
  """The checkpoint's parameters, restored onto this process's first device."""
  import jax
  import orbax.checkpoint as ocp
  from ml_collections import config_dict

  from phi1_jax.model import sharding
  from phi1_jax.train.state import state_shardings

  sys.path.insert(0, str(REPO / "configs"))
  import tiny

  config = tiny.get_config()
  config.model.n_layers = n_layers
  mesh = sharding.make_mesh(config_dict.ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])
  _, abstract_state, *_ = state_shardings(config, mesh)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore((workdir / "checkpoints" / str(step) / "state").absolute(), abstract_state)
  return jax.device_get(state["params"])


@pytest.fixture(scope="module")
def reference_run(cli_flags, tmp_path_factory):
  """One process, four devices, six steps."""
  workdir = tmp_path_factory.mktemp("ref")
  _run([sys.executable, *cli_flags, f"--workdir={workdir}"], devices=4)
  return workdir


def test_checkpoint_from_8_devices_fsdp_resumes_on_2(cli_flags, reference_run, tmp_path):
  _run(
    [
      sys.executable,
      *cli_flags,
      f"--workdir={tmp_path}",
      "--config.run_until_step=3",
      "--config.mesh.data=1",
      "--config.mesh.fsdp=8",
    ],
    devices=8,
  )
  _run([sys.executable, *cli_flags, f"--workdir={tmp_path}", "--config.mesh.data=2"], devices=2)
  assert [r["step"] for r in metric_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
  assert_same_losses(metric_rows(tmp_path), metric_rows(reference_run))
  assert _max_rel_err(_final_params(tmp_path), _final_params(reference_run)) <= 1e-5


def _children(pid: int) -> dict[int, int]:
  """{process_id: pid} of the trainers launch/local.py (pid) started."""
  pids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
  found = {}
  for child in map(int, pids):
    try:
      argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
      continue
    ids = [a.split(b"=")[1] for a in argv if a.startswith(b"--config.distributed.process_id=")]
    if ids:
      found[int(ids[0])] = child
  return found


def test_sigterm_seen_at_different_steps_saves_one_checkpoint_and_one_process_resumes_exactly(stdlib_cache, tmp_path):
  """Process 1 gets SIGTERM, process 0 two seconds later (as two nodes' slurmds signal their own
  tasks): both stop after the same step and save it; one process with both devices resumes from
  that checkpoint and logs what an uninterrupted one-process run logs."""
  total = 30  # steps enough that the first signal lands mid-run
  flags = [
    "-m",
    "phi1_jax.train",
    "--config=configs/tiny.py",
    f"--config.total_steps={total}",
    "--config.batch_size=4",
    "--config.model.n_layers=1",
    "--config.log_every=1",
    "--config.eval_every=1000",
    "--config.eval_batches=1",
    "--config.optimizer.warmup_steps=1",
    "--config.checkpoint_every=1000",
    f"--config.data.cache_dir={stdlib_cache}",
  ]
  ref, run = tmp_path / "ref", tmp_path / "run"
  _run([sys.executable, *flags, f"--workdir={ref}"], devices=2)
  launcher = [
    sys.executable,
    "launch/local.py",
    "--processes=2",
    "--devices=1",
    "--",
    sys.executable,
    *flags,
    f"--workdir={run}",
  ]
  proc = subprocess.Popen(
    launcher, cwd=REPO, env=repo_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  try:
    metrics = run / "metrics.jsonl"
    # step 1 logged: both are training
    wait_for(lambda: proc.poll() is not None or (metrics.exists() and metrics.read_text().strip()), 300, "step 1", 0.05)
    assert proc.poll() is None, "the run ended before step 1 was logged"
    pids = _children(proc.pid)
    assert sorted(pids) == [0, 1], pids
    os.kill(pids[1], signal.SIGTERM)
    time.sleep(2)
    with contextlib.suppress(ProcessLookupError):  # it may have stopped already, with process 1
      os.kill(pids[0], signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)  # without an agreed stop both wait for each other until killed
  finally:
    if proc.poll() is None:
      for pid in _children(proc.pid).values():
        os.kill(pid, signal.SIGKILL)
      proc.kill()
  assert proc.returncode == 0, out[-4000:]
  assert "[p0] model:" in out and "[p1] model:" not in out  # logs from process 0 only
  stopped = len(metric_rows(run))
  assert 1 <= stopped < total, out[-4000:]
  assert "[p0] stopped by " in out and f"at step {stopped}; checkpoint saved" in out, out[-4000:]
  assert [p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()] == [str(stopped)]
  data = sorted(p.name for p in (run / "checkpoints" / str(stopped) / "data").glob("process_*"))
  assert data == ["process_0-of-2.json", "process_1-of-2.json"]

  out = _run([sys.executable, *flags, f"--workdir={run}"], devices=2).stdout  # one process, two devices
  assert f"data position from step {stopped}" in out and f"steps {stopped} -> {total}" in out, out[-4000:]
  assert_same_losses(metric_rows(run), metric_rows(ref))  # one writer, the same global batches
  assert _max_rel_err(_final_params(run, total, n_layers=1), _final_params(ref, total, n_layers=1)) <= 1e-5


# ----------------------------------------------------------------------------- launchers


def test_two_processes_from_an_empty_cache(tmp_path):
  """The README's launch/local.py command on a fresh machine: both processes want the stdlib data,
  one builds it while the other waits (a small corpus cap keeps the build short, yet its held-out
  split fills one eval batch on each process)."""
  home = tmp_path / "home"
  env = repo_env(HOME=str(home))
  proc = subprocess.run(
    [
      sys.executable,
      "launch/local.py",
      "--processes=2",
      "--devices=2",
      "--",
      sys.executable,
      "-m",
      "phi1_jax.train",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path / 'mp'}",
      "--config.data.stdlib_max_bytes=2000000",
      "--config.data.stdlib_vocab_size=1024",
      "--config.model.vocab_size=1024",
      "--config.total_steps=2",
      "--config.batch_size=8",
      "--config.model.n_layers=1",
      "--config.eval_batches=1",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-5000:]
  assert "[p0] summary: finished at step 2/2" in proc.stdout
  assert "nothing to do" not in proc.stdout  # the process that waited for the build does not pack again
  built = list((home / ".cache" / "phi1_jax").glob("stdlib-*/tok-v1024-*/L128-*/manifest.json"))
  assert len(built) == 1 and not list((home / ".cache" / "phi1_jax").rglob("*.partial"))


def test_local_launcher_stops_the_others_at_once(tmp_path):
  """p1 fails at once; p0 ignores SIGTERM (as one stuck in a collective does) and would sleep 10 minutes."""
  code = (
    "import signal, sys, time; pid = int(sys.argv[-1].split('=')[1]); print('up', pid, flush=True)\n"
    "if pid == 1: time.sleep(1); sys.exit(5)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
  )
  proc = subprocess.Popen(
    [sys.executable, "launch/local.py", "--processes=2", "--grace=1", "--", sys.executable, "-c", code],
    cwd=REPO,
    stdout=subprocess.PIPE,
    text=True,
  )
  out, _ = proc.communicate(timeout=60)  # it would take 600 s if p0 were left running
  assert proc.returncode == 5
  assert "[p0] up 0" in out and "[p1] up 1" in out


def test_local_launcher_fails_when_one_process_fails():
  code = (
    "import sys, time; pid = int(sys.argv[-1].split('=')[1]); print('hi', pid, flush=True); "
    "time.sleep(1) if pid == 1 else None; sys.exit(3 if pid == 1 else 0)"
  )  # p0 done before p1 fails
  proc = subprocess.run(
    [sys.executable, "launch/local.py", "--processes=2", "--", sys.executable, "-c", code],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 3
  assert "[p0] hi 0" in proc.stdout and "[p1] hi 1" in proc.stdout
