"""A recipe's train step on a real one-node SLURM cluster (launch/slurm_local_cluster.sh; skipped, saying
why, where none can run): tests/data/recipe_small.py with `--set launcher=slurm` trains through
launch/slurm.sbatch and a local run then reuses every step; a failing job's exit code is the step's; a
SIGTERM to the recipe cancels its job, whose trainer saves a checkpoint as under a preemption; the job a
SIGKILLed recipe leaves running makes a rerun refuse that step."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, losses, repo_env, slurm_partition, wait_for

RECIPE = "tests/data/recipe_small.py"
SBATCH_CPU = "--sbatch_args=--nodes=1 --ntasks-per-node=1 --gpus-per-node=0 --cpus-per-task=1"
ON_SLURM = ["--set", "launcher=slurm", SBATCH_CPU]
pytestmark = pytest.mark.slow


def recipe_argv(root: Path, *args: str) -> list[str]:
  return [sys.executable, "-m", "phi1_jax.recipe", "run", RECIPE, f"--root={root}", "--quiet", *args]


def recipe(root: Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    recipe_argv(root, *args), cwd=REPO, env=repo_env(JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=400
  )


def train_folder(root: Path, total_steps: int) -> Path:
  """The train step's folder for `total_steps` (its hash differs with the setting)."""
  for record in root.glob("train/*/provenance.json"):
    if json.loads(record.read_text())["identity"]["args"]["config.total_steps"] == total_steps:
      return record.parent
  raise AssertionError(f"no train step with total_steps={total_steps} under {root}")


def queued(job_id: str) -> str:
  return subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> Path:
  slurm_partition()
  root = tmp_path_factory.mktemp("recipe_slurm")
  proc = recipe(root, *ON_SLURM)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return root


def test_a_train_step_on_slurm_runs_once_and_a_local_run_reuses_it(slurm_run):
  folder = train_folder(slurm_run, 30)
  record = json.loads((folder / "provenance.json").read_text())
  [attempt] = record["attempts"]
  assert record["completed"] and attempt["exit_code"] == 0 and attempt["argv"][:2] == ["sbatch", "--wait"]
  log = (folder / "log.txt").read_text()
  # written by SLURM from the job: launch/slurm.sbatch's line, then the trainer's own
  assert f"Submitted batch job {attempt['slurm_job']}\njob {attempt['slurm_job']}: 1 nodes, 1 processes" in log
  assert "step 30/30 " in log and "summary: finished at step 30/30" in log
  assert not queued(attempt["slurm_job"])

  proc = recipe(slurm_run)  # the launcher is not part of a step's identity
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "5 steps under" in proc.stdout and "5 cached, 0 to run" in proc.stdout and "nothing to do" in proc.stdout


def test_a_failed_job_exit_code_is_the_step_exit_code(slurm_run):
  proc = recipe(slurm_run, *ON_SLURM, "--set", "train_steps=0")  # the trainer refuses it on the node: exit 2
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  folder = train_folder(slurm_run, 0)
  assert f"recipe: error: step pretrain/raw/seed0 failed (exit code 2); its log: {folder}/log.txt" in proc.stdout
  assert "1 step(s) not run because an input failed: eval/raw/seed0/base" in proc.stdout
  [attempt] = json.loads((folder / "provenance.json").read_text())["attempts"]
  assert attempt["exit_code"] == 2
  assert "python -m phi1_jax.train: error: config.total_steps=0 must be positive" in (folder / "log.txt").read_text()


def test_sigterm_cancels_the_job_and_after_a_sigkill_the_rerun_refuses_the_job_left_running(slurm_run):
  argv = recipe_argv(slurm_run, *ON_SLURM, "--set", "train_steps=1000")
  env = repo_env(JAX_PLATFORMS="cpu")
  metrics = lambda: list(slurm_run.glob("train/*/out/metrics.jsonl"))  # noqa: E731
  rows_before = {m: m.read_text().count("\n") for m in metrics()}
  grown = lambda: any(m.read_text().count("\n") > rows_before.get(m, 0) for m in metrics())  # noqa: E731

  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:  # once the trainer has logged a step on the node
    wait_for(grown, 180, "the job's first step")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=150)
  finally:
    proc.kill()
  assert proc.returncode == 130, out[-3000:] + err[-3000:]
  assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM: "), err[-3000:]
  folder = train_folder(slurm_run, 1000)
  [attempt] = json.loads((folder / "provenance.json").read_text())["attempts"]
  assert not queued(attempt["slurm_job"])  # sbatch --wait alone would have left it running
  log = (folder / "log.txt").read_text()
  assert f"JOB {attempt['slurm_job']} ON " in log and "CANCELLED" in log, log[-3000:]
  stopped = max(losses(folder / "out"))
  assert 1 <= stopped < 1000 and (folder / "out" / "checkpoints" / str(stopped)).is_dir(), log[-3000:]
  assert f"stopped by signal SIGTERM at step {stopped}; checkpoint saved" in log, log[-3000:]

  # SIGKILL: sbatch --wait dies with the recipe, its job does not; the rerun refuses rather than start a
  # second trainer in the same folder.
  rows_before = {m: m.read_text().count("\n") for m in metrics()}
  proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    wait_for(grown, 180, "the resumed job's first step")
  finally:
    proc.kill()
    proc.communicate()
  job = json.loads((folder / "provenance.json").read_text())["attempts"][-1]["slurm_job"]
  try:
    assert queued(job)
    refused = recipe(slurm_run, *ON_SLURM, "--set", "train_steps=1000")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
      f"python -m phi1_jax.recipe run: error: step pretrain/raw/seed0: SLURM job {job} from an earlier run still "
      f"runs it; wait for it (squeue -j {job}) or cancel it (scancel {job}), then rerun"
    ]
  finally:
    subprocess.run(["scancel", job], timeout=60)
  assert f"resumed from {folder}/out/checkpoints/{stopped}" in (folder / "log.txt").read_text()
  wait_for(lambda: not queued(job), 120, f"job {job} to end")
