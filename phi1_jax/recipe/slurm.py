"""A train step on SLURM: `sbatch --wait launch/slurm.sbatch <the trainer's flags>`.

SLURM writes the job's output to the step's log; sbatch's exit code (the job's) is the step's;
SIGINT / SIGTERM of the recipe cancel the job (a signal to `sbatch --wait` would end sbatch and
leave the job running). A SIGKILLed recipe leaves its job running: the rerun refuses the step,
naming the job, until it has ended.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from phi1_jax.cli import UserError


def command(name: str, trainer_flags: list[str], log_path: Path, sbatch_args: str) -> tuple[list[str], dict]:
  """(argv, environment) of the sbatch call that runs the trainer with `trainer_flags` as step `name`."""
  # "%" would start one of SLURM's filename patterns
  output = str(log_path).replace("%", "%%")
  argv = ["sbatch", "--wait", f"--job-name={name}", f"--output={output}", "--open-mode=append"]
  argv += shlex.split(sbatch_args) + [str(launch_script()), *trainer_flags]
  # The job runs in this process's working directory and environment; launch/slurm.sbatch starts
  # $PYTHON: this interpreter, as for a local step, unless the user chose another.
  return argv, {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}


def launch_script() -> Path:
  """launch/slurm.sbatch; UserError when it or sbatch is missing."""
  from phi1_jax.sweep import slurm as sweep_slurm

  if not shutil.which("sbatch"):
    raise UserError("a step runs on SLURM (launcher slurm) but sbatch is not on PATH (not a SLURM login node?)")
  return sweep_slurm.launch_script()


def job_id(first_line: bytes) -> str:
  """The job id from sbatch's first line ("Submitted batch job N"); "" if it printed something else (an
  error, which the log keeps)."""
  return first_line.split()[-1].decode() if first_line.startswith(b"Submitted batch job ") else ""


def cancel_job(job_id: str, timeout: float = 180) -> None:
  """scancel (SLURM sends the job SIGTERM, then SIGKILL after the cluster's KillWait) and waits until the
  job has left the queue: sbatch --wait polls at up to 32 s intervals, so it is not what tells."""
  subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with contextlib.suppress(subprocess.SubprocessError):
      queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=60)
      if not queued.stdout.strip():  # ended (or already purged: "Invalid job id")
        return
    time.sleep(1)


def refuse_if_job_left(name: str, record: dict) -> None:
  """UserError when an earlier attempt's job still runs (its recipe was SIGKILLed, which sbatch --wait
  does not pass on): a second trainer in the same folder would fight over its checkpoints."""
  jobs = [a["slurm_job"] for a in record["attempts"] if a.get("slurm_job")]
  if not jobs:
    return
  queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", jobs[-1]], capture_output=True, text=True, timeout=60)
  if queued.stdout.strip():
    raise UserError(
      f"step {name}: SLURM job {jobs[-1]} from an earlier run still runs it; wait for it "
      f"(squeue -j {jobs[-1]}) or cancel it (scancel {jobs[-1]}), then rerun"
    )
