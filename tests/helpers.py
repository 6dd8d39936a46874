"""Helpers the test modules share: the repository root, subprocesses run from it, free ports,
waiting, a real `phi1_jax.serve`, a SLURM partition, and the small trainer runs several files compare."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SEQ_LEN = 128
TINY_VOCAB = 4096
STDLIB = Path(os.__file__).resolve().parent  # real Python source, on every machine


def repo_env(devices: int | None = None, **extra: str) -> dict:
  """This environment with the repository first on PYTHONPATH; `devices`: that many CPU devices for jax."""
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  if devices is not None:
    env |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return {**env, **extra}


def run_module(module: str, *args: str, timeout: float = 300, env: dict | None = None, **kw):
  """Runs `python -m module args...` in a real subprocess from the repo root."""
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=repo_env(**(env or {})),
    timeout=timeout,
    capture_output=True,
    text=True,
    **kw,
  )


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
  """Polls `predicate` until it is true; fails naming `what` after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(poll)


def alive(pid: int) -> bool:
  """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except (FileNotFoundError, ProcessLookupError):
    return False


@contextlib.contextmanager
def serve_process(checkpoint, log_path: Path, *flags: str, env: dict | None = None):
  """A real `python -m phi1_jax.serve --checkpoint=...` on 127.0.0.1 (port chosen by the OS);
  yields (base URL, process) once GET /health answers 200, terminates it after."""

  def healthy(url) -> bool:
    try:
      with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return resp.status == 200 and bool(json.loads(resp.read()))
    except OSError:  # 503 while compiling, or not listening yet
      return False

  with open(log_path, "w") as log_file:
    proc = subprocess.Popen(
      [sys.executable, "-m", "phi1_jax.serve", f"--checkpoint={checkpoint}", "--port=0", *flags],
      cwd=REPO,
      env=repo_env(**(env or {})),
      stdout=log_file,
      stderr=subprocess.STDOUT,
    )
  try:
    url, deadline = None, time.time() + 300
    while not (url and healthy(url)):
      assert proc.poll() is None, f"server exited {proc.returncode}:\n{log_path.read_text()}"
      assert time.time() < deadline, f"server not ready in 300s:\n{log_path.read_text()}"
      if url is None:
        found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        url = found and found.group(1)
      time.sleep(0.25)
    yield url, proc
  finally:
    proc.terminate()
    proc.wait(30)


def slurm_partition(min_mem_mb: int = 0) -> str:
  """The default partition of a SLURM cluster whose node takes jobs (and offers `min_mem_mb`):
  already up, or started by launch/slurm_local_cluster.sh (root); the test skips, saying why, if neither."""
  if not shutil.which("sbatch"):
    pytest.skip("SLURM is not installed (as root, launch/slurm_local_cluster.sh installs and starts it; .ci/run does)")

  def ready():
    out = subprocess.run(["sinfo", "-h", "-o", "%P|%t|%m"], capture_output=True, text=True, timeout=30).stdout
    for name, state, mem in (line.split("|") for line in out.split()):
      if name.endswith("*") and state in ("idle", "mix", "alloc", "comp") and int(mem.rstrip("+")) >= min_mem_mb:
        return name.rstrip("*")
    return None

  if not ready():
    if os.geteuid() != 0:
      pytest.skip(
        f"no SLURM node taking jobs with {min_mem_mb} MB, and (re)starting one "
        "(launch/slurm_local_cluster.sh) needs root"
      )
    proc = subprocess.run(
      ["bash", "launch/slurm_local_cluster.sh"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode == 2:
      pytest.skip(f"cannot start a SLURM cluster here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and ready(), proc.stdout + proc.stderr
  return ready()


# ----------------------------------------------------------------------------- small trainer runs

SMALL = [
  "--config.model.d_model=64",
  "--config.model.n_layers=2",
  "--config.model.n_heads=2",
  "--config.model.mlp_dim=128",
  "--config.batch_size=4",
  "--config.log_every=1",
]


def train_args(workdir, cache, *extra):
  """The trainer's flags for a small model on the tiny config's data in `cache`."""
  return ["--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data.cache_dir={cache}", *SMALL, *extra]


def metric_rows(workdir) -> list[dict]:
  return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def losses(workdir) -> dict[int, float]:
  """step -> loss, the last row of each step winning (a killed run may have logged past its checkpoint)."""
  return {r["step"]: r["loss"] for r in metric_rows(workdir)}


def assert_same_losses(got: list[dict], want: list[dict]) -> None:
  """The same steps with loss and grad_norm within float32 reduction-order noise (1e-5 relative)."""
  assert [r["step"] for r in got] == [r["step"] for r in want], ([r["step"] for r in got], [r["step"] for r in want])
  for g, r in zip(got, want):
    for key in ("loss", "grad_norm"):
      assert abs(g[key] - r[key]) <= 1e-5 * abs(r[key]), (g["step"], key, g[key], r[key])


def final_params(workdir, step):
  import orbax.checkpoint as ocp

  state = ocp.StandardCheckpointer().restore((Path(workdir) / "checkpoints" / str(step) / "state").absolute())
  return state["params"]


def sigkill_once_saved(args, saved) -> None:
  """Runs the trainer with `args` and SIGKILLs it as soon as `saved` exists (a checkpoint), while it runs."""
  proc = subprocess.Popen(
    [sys.executable, "-m", "phi1_jax.train", *args],
    cwd=REPO,
    env=repo_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not saved.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
