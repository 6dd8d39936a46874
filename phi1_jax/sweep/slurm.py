"""The SLURM executor: one job array, one trial per task, each task starting the trainer through
`launch/slurm.sbatch` (srun, `--config.distributed.auto=True`) inside its own allocation.

    ROOT/slurm/array.sh      the array's batch script (written on each submission)
    ROOT/slurm/%A_%a.out     each task's output (the trainer's is also in the trial's attempt log)

Only unfinished trials are submitted (`--array=3,5,...%PARALLEL`); a task that finds its trial
finished (or running elsewhere) does nothing, so resubmitting after a preemption is safe.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from phi1_jax.cli import UserError
from phi1_jax.sweep import trials as trial_lib


def launch_script() -> Path:
  """launch/slurm.sbatch of this checkout (the package's parent folder), else of the current folder."""
  for base in (Path(__file__).resolve().parents[2], Path.cwd()):
    script = base / "launch" / "slurm.sbatch"
    if script.is_file():
      return script
  raise UserError("launch/slurm.sbatch not found: run from the phi1_jax repository (pip install -e .)")


def trainer_command() -> list[str]:
  return ["bash", str(launch_script())]


def array_script(root: Path, job_name: str) -> str:
  root = root.absolute()
  return "\n".join(
    [
      "#!/usr/bin/env bash",
      f"#SBATCH --job-name={job_name}",
      f"#SBATCH --output={root}/slurm/%A_%a.out",
      "#SBATCH --ntasks=1",
      "set -euo pipefail",
      f"cd {shlex.quote(str(Path.cwd()))}",
      f"exec {shlex.quote(sys.executable)} -m phi1_jax.sweep trial --root={shlex.quote(str(root))} "
      '--index="$SLURM_ARRAY_TASK_ID" --launcher=slurm',
      "",
    ]
  )


def submit(root: Path, plan: dict, parallel: int, sbatch_args: str, log=print) -> int:
  """Submits the unfinished trials as one array; returns sbatch's exit code."""
  if not shutil.which("sbatch"):
    raise UserError("--executor=slurm: sbatch is not on PATH (not a SLURM login node?)")
  launch_script()
  todo = [
    i for i, t in enumerate(plan["trials"]) if trial_lib.status(root, t) not in ("finished", "diverged", "running")
  ]
  if not todo:
    log(f"sweep {root}: nothing to submit (every trial is finished, diverged or running)")
    return 0
  folder = root / "slurm"
  folder.mkdir(parents=True, exist_ok=True)
  script = folder / "array.sh"
  script.write_text(array_script(root, f"sweep-{root.absolute().name}"))
  array = ",".join(map(str, todo)) + (f"%{parallel}" if parallel else "")
  cmd = ["sbatch", "--parsable", f"--array={array}", *shlex.split(sbatch_args), str(script)]
  log("+ " + shlex.join(cmd))
  out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
  if out.returncode:
    log(
      f"python -m phi1_jax.sweep: error: sbatch failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
    )
    return out.returncode
  job = out.stdout.strip().split(";")[0]
  log(
    f"submitted job array {job}: {len(todo)} trials ({parallel or 'all'} at a time). Follow it with "
    f"`squeue -j {job}` and `python -m phi1_jax.sweep report --root={root}`; rerun this command to resubmit "
    "what is unfinished"
  )
  return 0


def _pythonpath() -> str:
  """This checkout first, so tasks import the same phi1_jax as this process."""
  here = str(Path(__file__).resolve().parents[2])
  return os.pathsep.join([here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != here])
