"""`python -m phi1_jax.plan`: the real train step compiled for a simulated 8-device mesh, no weights."""

import subprocess
import sys

from helpers import REPO, repo_env


def _plan(*args):
  env = repo_env()
  env.pop("XLA_FLAGS", None)  # plan sets the device count itself
  return subprocess.run(
    [sys.executable, "-m", "phi1_jax.plan", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=600
  )


def test_plan_reports_memory_per_device():
  # phi-1-small's widths; fewer layers and a shorter sequence keep the compile short.
  proc = _plan(
    "--config=configs/phi1_small.py",
    "--mesh=data=2,fsdp=4,tensor=1",
    "--devices=8",
    "--config.model.n_layers=1",
    "--config.seq_len=128",
    "--config.batch_size=32",
    "--config.grad_accum_steps=2",
    "--config.loss_chunk_size=64",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} on 8 cpu devices" in out
  assert "batch 32 sequences x 128 = 4,096 tokens per step (2 microbatches, 2 sequences per device each)" in out
  assert "per device (compiled): arguments" in out and "temporaries" in out and "peak about" in out
  # 1-layer phi-1-small: ~118M parameters; fp32 params + Adam mu/nu over 4 fsdp shards ~ 0.33 GiB per device.
  state_gib = float(out.split("per device: state ")[1].split(" GiB")[0])
  assert 0.25 < state_gib < 0.45, out


def test_plan_refuses_a_mesh_the_devices_do_not_fill():
  proc = _plan("--config=configs/tiny.py", "--mesh=data=2,fsdp=8", "--devices=8")
  assert proc.returncode == 2
  assert (
    proc.stderr.strip()
    .splitlines()[-1]
    .startswith("python -m phi1_jax.plan: error: mesh {'data': 2, 'fsdp': 8, 'tensor': 1} needs 16 devices")
  )


def test_plan_refuses_a_bad_mesh_flag():
  proc = _plan("--config=configs/tiny.py", "--mesh=data=2,pipeline=4", "--devices=8")
  assert proc.returncode == 2 and "--mesh item 'pipeline=4'" in proc.stderr
