"""The cluster launchers, launched: launch/slurm.sbatch on a real one-node SLURM cluster
(launch/slurm_local_cluster.sh; .ci/run installs and starts it as root) and launch/tpu_pod.sh through a
recording `gcloud` that runs the remote command here, as worker 0 of a one-worker slice.

- The README's sbatch command, 2 tasks on CPU through jax.distributed and gloo: scancel (SIGTERM, then
  SIGKILL after KillWait) makes both tasks save; the same sbatch command resumes, and the losses equal
  one process's uninterrupted run. (Tasks that see SIGTERM at different steps: tests/test_multiprocess.py.)
- A task that dies ends the whole job (srun --kill-on-bad-exit) with a non-zero exit.
- tpu_pod.sh's gcloud command and the remote line it builds (flag order, quoting of spaces, commas and
  quotes, a REPO_DIR under ~ with a space) train for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, assert_same_losses, free_port, metric_rows, repo_env, slurm_partition, wait_for

pytestmark = pytest.mark.slow
TOTAL_STEPS = 30  # steps enough that scancel lands mid-run
SBATCH_CPU = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]  # the README's


@pytest.fixture(scope="module")
def trainer_flags(stdlib_cache):
  return [
    "--config=configs/tiny.py",
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.batch_size=4",
    "--config.model.n_layers=1",
    "--config.log_every=1",
    "--config.eval_every=1000",
    "--config.eval_batches=1",
    "--config.optimizer.warmup_steps=1",
    "--config.checkpoint_every=1000",
    f"--config.data.cache_dir={stdlib_cache}",
  ]


def _env(devices: int = 1, **extra) -> dict:
  # python3 on PATH is this interpreter (pyenv shims depend on HOME, which the gcloud test changes)
  return repo_env(devices, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


@pytest.fixture(scope="module")
def one_process_run(trainer_flags, tmp_path_factory) -> list[dict]:
  """The uninterrupted reference: one process, two CPU devices."""
  workdir = tmp_path_factory.mktemp("one_process")
  proc = subprocess.run(
    [sys.executable, "-m", "phi1_jax.train", *trainer_flags, f"--workdir={workdir}"],
    cwd=REPO,
    env=_env(devices=2),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return metric_rows(workdir)


# ----------------------------------------------------------------------------- SLURM


@pytest.fixture(scope="module")
def slurm():
  """A one-node SLURM cluster that takes jobs: already up, or started here (root, packages installed)."""
  return slurm_partition()


def _sbatch(workdir: Path, trainer_flags: list[str], *options: str, wait=True, env=None, timeout=600):
  """The README's sbatch command (plus an output file next to the workdir); returns the process."""
  argv = [
    "sbatch",
    *(["--wait"] if wait else []),
    "--parsable",
    f"--output={workdir}.%j.out",
    *SBATCH_CPU,
    *options,
    "launch/slurm.sbatch",
    *trainer_flags,
    f"--workdir={workdir}",
  ]
  return subprocess.run(argv, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _job_output(workdir: Path, proc) -> str:
  job_id = proc.stdout.split()[0].split(";")[0]
  return Path(f"{workdir}.{job_id}.out").read_text()


def test_sbatch_one_failing_task_ends_the_job(slurm, trainer_flags, tmp_path):
  # Task 1 dies at once; task 0 is the real trainer, which would otherwise wait in
  # jax.distributed.initialize for it (5 minutes, jax's default timeout).
  python = tmp_path / "python_task1_dies"
  python.write_text(
    '#!/usr/bin/env bash\nif [[ $SLURM_PROCID == 1 ]]; then echo "task 1 dies" >&2; exit 3; fi\nexec python3 "$@"\n'
  )
  python.chmod(0o755)
  workdir = tmp_path / "run"
  proc = _sbatch(workdir, trainer_flags, env=_env(PYTHON=str(python)), timeout=240)
  out = _job_output(workdir, proc)
  assert proc.returncode != 0, out
  assert "task 1: Exited with exit code 3" in out and "Terminating StepId" in out, out
  assert "model:" not in out  # task 0 never trained: it was stopped, not left waiting


def _submit_and_wait_for_step_1(workdir: Path, trainer_flags: list[str], *options: str) -> str:
  proc = _sbatch(workdir, trainer_flags, *options, wait=False)
  assert proc.returncode == 0, proc.stderr
  job_id = proc.stdout.split(";")[0].strip()
  metrics = workdir / "metrics.jsonl"
  try:  # as soon as step 1 is logged: the job is still running however fast the steps are
    wait_for(lambda: metrics.exists() and metrics.read_text().strip(), 300, "step 1 of job " + job_id, poll=0.05)
  except AssertionError:
    subprocess.run(["scancel", job_id], timeout=30)
    raise
  return job_id


def _job_ended(job_id: str) -> bool:
  return not subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30).stdout.strip()


def test_scancel_saves_and_the_same_command_resumes_exactly(slurm, trainer_flags, one_process_run, tmp_path):
  workdir = tmp_path / "run"
  job_id = _submit_and_wait_for_step_1(workdir, trainer_flags)
  # SIGCONT and SIGTERM to every task, SIGKILL after the cluster's KillWait, as a preemption does
  subprocess.run(["scancel", job_id], check=True, capture_output=True, timeout=30)
  wait_for(lambda: _job_ended(job_id), 120, f"job {job_id} to end")
  out = Path(f"{workdir}.{job_id}.out").read_text()
  stopped = len(metric_rows(workdir))
  assert 1 <= stopped < TOTAL_STEPS, out[-4000:]
  assert "stopped by " in out and f"at step {stopped}; checkpoint saved" in out, out[-4000:]
  assert (workdir / "checkpoints" / str(stopped)).is_dir()

  proc = _sbatch(workdir, trainer_flags)  # the same command again
  out = _job_output(workdir, proc)
  assert proc.returncode == 0, out[-4000:]
  assert "1 nodes, 2 processes" in out and "2 cpu devices" in out, out[-4000:]  # two jax processes, one device each
  assert out.count("model:") == 1  # logs from process 0 only
  assert f"steps {stopped} -> {TOTAL_STEPS}" in out, out[-4000:]
  assert_same_losses(metric_rows(workdir), one_process_run)


def test_sbatch_without_config_is_a_usage_error():
  proc = subprocess.run(["bash", "launch/slurm.sbatch", "--workdir=/tmp/x"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 2 and "usage:" in proc.stderr


# ----------------------------------------------------------------------------- TPU pod (recorded gcloud)

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stands in for `gcloud compute tpus tpu-vm ssh NAME --worker=all --command=CMD` on a slice of one
# worker: records its arguments, then runs CMD with bash (the workers' login shell) in the worker's home.
set -euo pipefail
printf '%s\0' "$@" > "$GCLOUD_ARGV"
command=""
for arg in "$@"; do [[ $arg == --command=* ]] && command=${arg#--command=}; done
cd "$HOME"
# jax learns a slice's workers from TPU metadata, which needs TPU chips. Worker 0 of one is told
# through the variables jax's SLURM detection reads, so jax.distributed.initialize() runs for real.
export SLURM_JOB_ID=1 SLURM_STEP_NODELIST=localhost SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0
exec bash -c "$command"
"""


def test_tpu_pod_command_runs_on_a_recorded_gcloud(trainer_flags, one_process_run, tmp_path):
  home, bin_dir = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  bin_dir.mkdir()
  (home / "phi1 jax").symlink_to(REPO)  # the repo on the worker, at a path with a space
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  workdir = tmp_path / "run dir,it's"  # a space, a comma and a quote to survive two shells
  env = _env(
    HOME=str(home), REPO_DIR="~/phi1 jax", GCLOUD_ARGV=str(tmp_path / "argv"), JAX_COORDINATOR_PORT=str(free_port())
  )
  env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
  del env["PYTHONPATH"]  # the remote `cd` decides which phi1_jax runs (python -m imports from there)
  flags = [*trainer_flags, f"--workdir={workdir}", "--config.run_until_step=3"]
  proc = subprocess.run(
    ["bash", "launch/tpu_pod.sh", "my-tpu", "us-central2-b", "my-project", "--", *flags],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  argv = (tmp_path / "argv").read_text().split("\0")[:-1]
  assert argv[:10] == [
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "my-tpu",
    "--zone",
    "us-central2-b",
    "--project",
    "my-project",
    "--worker=all",
  ], argv
  assert argv[10].startswith(r"--command=cd ~/phi1\ jax && python3 -m phi1_jax.train --config=configs/tiny.py ")
  assert argv[10].endswith(" --config.distributed.auto=True"), argv[10]
  assert_same_losses(metric_rows(workdir), one_process_run[:3])


def test_tpu_pod_usage_errors():
  run = lambda *a: subprocess.run(["bash", "launch/tpu_pod.sh", *a], cwd=REPO, capture_output=True, text=True)  # noqa: E731
  assert run("tpu", "zone").returncode == 2
  assert "after --" in run("tpu", "zone", "project", "--config=x").stderr
  assert "--config" in run("tpu", "zone", "--", "--workdir=x").stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize(
  "script", ["launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/slurm_local_cluster.sh", "docs/chain.sh"]
)
def test_shell_scripts_pass_shellcheck(script):
  proc = subprocess.run(["shellcheck", "--shell=bash", script], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout
