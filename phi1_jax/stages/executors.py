"""Where the data stages' datatrove pipelines run: a local process pool, SLURM or Ray, from one set of flags.

A stage is a datatrove pipeline with a task count and a logging folder whose `completions/` marks
each finished task; every executor skips those on a rerun.

SLURM (datatrove's SlurmPipelineExecutor): each stage is pickled into its logging folder and
submitted as an sbatch job array whose tasks run datatrove's `launch_pickled_pipeline`; stages are
chained with `afterok` dependencies. The jobs run the python that runs this command (its scripts
folder first on PATH) and import this phi1_jax (its folder first on PYTHONPATH), with the rest of
the submitting shell's environment (`--export=ALL`), so those folders and OUT must be on a
filesystem the nodes share. The submitted ids are kept in `slurm_jobs.json`: a rerun while they are
queued waits for them (`--slurm_wait`) or says so, rather than submitting the same tasks twice.

Ray (datatrove's RayPipelineExecutor): the stages run one after another on `ray.init(address=...)`,
or on a local Ray started here with `--ray_cpus` CPUs and no dashboard.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from phi1_jax.cli import UserError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this phi1_jax
_PROGRESS_EVERY_S = 10.0


class ExecutorError(UserError):
  """A bad executor flag or a cluster that cannot take the jobs: one line, exit code 2, nothing submitted."""


class StagesIncomplete(RuntimeError):
  """Some task did not complete (its logs are named in the message): one line, exit code 1."""


@dataclass
class Stage:
  name: str
  pipeline: list
  tasks: int
  logging_dir: Path

  def done(self) -> int:
    folder = self.logging_dir / "completions"
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def add_args(p, kinds=("local", "slurm")) -> None:
  p.add_argument("--executor", default="local", choices=kinds, help="where the tasks run")
  p.add_argument("--slurm_partition", default=None, help="--executor=slurm: the partition the jobs go to")
  p.add_argument("--slurm_time", default="24:00:00", help="--executor=slurm: time limit of each task")
  p.add_argument("--slurm_cpus_per_task", type=int, default=1)
  p.add_argument("--slurm_mem_per_cpu", default="2G", help="--executor=slurm: memory per CPU, as sbatch takes it")
  p.add_argument("--slurm_qos", default=None, help="--executor=slurm: the jobs' QOS (default: the account's own)")
  p.add_argument(
    "--slurm_wait",
    action="store_true",
    help="--executor=slurm: wait for the jobs (progress every 10 s), then finish the stage",
  )
  if "ray" in kinds:
    p.add_argument(
      "--ray_address", default=None, help="--executor=ray: a running Ray cluster (default: start a local one)"
    )
    p.add_argument("--ray_cpus", type=int, default=None, help="--executor=ray: CPUs of the local Ray (default: all)")


def _mem_mb(text: str) -> int | None:
  m = re.fullmatch(r"(\d+)([KMGT]?)B?", text.strip().upper())
  if not m:
    return None
  scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
  return int(int(m.group(1)) * scale)


def check(args) -> None:
  """Before any work: the executor can run here (ExecutorError otherwise, nothing submitted)."""
  if args.executor == "slurm":
    _check_slurm(args)
  elif args.executor == "ray":
    try:
      import ray  # noqa: F401
    except ImportError:
      raise ExecutorError("--executor=ray needs the ray package (pip install ray)") from None
    if args.ray_cpus is not None and args.ray_cpus < 1:
      raise ExecutorError(f"--ray_cpus={args.ray_cpus}: must be >= 1")


def _launcher_dir() -> str:
  """The folder holding datatrove's launch_pickled_pipeline for this python: first on the jobs' PATH."""
  for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
    if (Path(folder) / "launch_pickled_pipeline").is_file():
      return folder
  raise ExecutorError(
    f"--executor=slurm: datatrove's launch_pickled_pipeline is not beside {sys.executable}; "
    "install datatrove into the python that runs this command"
  )


def _check_slurm(args) -> None:
  for tool in ("sbatch", "sinfo", "squeue"):
    if not shutil.which(tool):
      raise ExecutorError(f"--executor=slurm: {tool} is not on PATH (not a SLURM login node?)")
  if not args.slurm_partition:
    raise ExecutorError("--executor=slurm needs --slurm_partition")
  if args.slurm_cpus_per_task < 1:
    raise ExecutorError(f"--slurm_cpus_per_task={args.slurm_cpus_per_task}: must be >= 1")
  mem = _mem_mb(args.slurm_mem_per_cpu)
  if not mem:
    raise ExecutorError(f"--slurm_mem_per_cpu={args.slurm_mem_per_cpu!r}: give a size as sbatch takes it (2G, 500M)")
  _launcher_dir()
  proc = subprocess.run(["sinfo", "-h", "-o", "%R|%c|%m"], capture_output=True, text=True, timeout=60)
  if proc.returncode:
    raise ExecutorError(f"--executor=slurm: sinfo failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
  nodes: dict[str, list[tuple[int, int]]] = {}
  for line in proc.stdout.split():
    name, cpus, mem_node = line.split("|")
    nodes.setdefault(name, []).append((int(cpus.rstrip("+")), int(mem_node.rstrip("+"))))
  if args.slurm_partition not in nodes:
    raise ExecutorError(
      f"--slurm_partition={args.slurm_partition}: no such partition (this cluster has: "
      f"{', '.join(sorted(nodes)) or 'none'})"
    )
  cpus, mem_node = max(nodes[args.slurm_partition])
  if args.slurm_cpus_per_task > cpus or mem * args.slurm_cpus_per_task > mem_node:
    raise ExecutorError(
      f"--slurm_cpus_per_task={args.slurm_cpus_per_task} x --slurm_mem_per_cpu="
      f"{args.slurm_mem_per_cpu} does not fit a node of partition {args.slurm_partition} "
      f"({cpus} CPUs, {mem_node} MB)"
    )


def run(args, stages: list[Stage], workers: int | None, job_prefix: str, state_dir: Path, log=print) -> bool:
  """Runs the stages in order, each skipping its completed tasks. True when every task of every stage
  is complete; False when SLURM jobs were submitted (or are still queued) and not waited for.
  `workers`: tasks at once (None: 1 locally, no limit on SLURM and Ray).

  Locally and on Ray, datatrove's log lines (and any worker's traceback) go to
  `state_dir/datatrove.log`; the terminal gets a progress line per stage (tasks done), and a
  failed task ends the run in one line naming that file."""
  if args.executor == "slurm":
    return _slurm(args, stages, workers, job_prefix, Path(state_dir), log)
  log_file = Path(state_dir) / "datatrove.log"
  with stderr_to(log_file) as terminal:
    if args.executor == "ray":
      _ray_init(args)
    for stage in stages:
      if args.executor == "local":
        from datatrove.executor.local import LocalPipelineExecutor

        executor = LocalPipelineExecutor(
          stage.pipeline,
          tasks=stage.tasks,
          workers=max(1, min(workers or 1, stage.tasks)),
          logging_dir=str(stage.logging_dir),
        )
      else:
        from datatrove.executor.ray import RayPipelineExecutor

        executor = RayPipelineExecutor(
          stage.pipeline, tasks=stage.tasks, workers=workers or -1, logging_dir=str(stage.logging_dir)
        )
      with _ProgressLine(f"{job_prefix} {stage.name}", stage, log_file, terminal):
        try:
          executor.run()
        except Exception as e:  # a task raised: its traceback is in the log, the user gets one line
          raise StagesIncomplete(
            f"stage {stage.name}: a task failed ({type(e).__name__}: {e}); traceback in "
            f"{log_file}; the same command again redoes only the unfinished tasks".replace("\n", " ")
          ) from None
      _raise_if_incomplete([stage], log_file)  # the next stage reads this one's output
  return True


@contextlib.contextmanager
def stderr_to(path: Path):
  """File descriptor 2 into `path` (appended) while the stages run: datatrove's loguru lines, and
  the worker processes started meanwhile keep it. Yields a stream to the terminal's stderr."""
  path.parent.mkdir(parents=True, exist_ok=True)
  sys.stderr.flush()
  saved = os.dup(2)
  with open(path, "a") as f:
    os.dup2(f.fileno(), 2)
  terminal = os.fdopen(os.dup(saved), "w", buffering=1)
  try:
    yield terminal
  finally:  # also on Ctrl-C: the stop line must reach the user
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    terminal.close()


class _ProgressLine:
  """A line on the terminal when a stage starts, whenever a task of it completes (at most every
  _PROGRESS_EVERY_S seconds) and when it ends."""

  def __init__(self, name: str, stage: Stage, log_file: Path, terminal):
    self.name, self.stage, self.log_file, self.terminal = name, stage, log_file, terminal
    self.stop = threading.Event()

  def _line(self, t0: float) -> str:
    return f"{self.name}: {self.stage.done()}/{self.stage.tasks} tasks done, {time.time() - t0:.0f} s"

  def _watch(self, t0: float) -> None:
    shown, last = self.stage.done(), time.time()
    while not self.stop.wait(1.0):
      if self.stage.done() != shown and time.time() - last >= _PROGRESS_EVERY_S:
        shown, last = self.stage.done(), time.time()
        print(self._line(t0), file=self.terminal)

  def __enter__(self):
    self.t0 = time.time()
    print(f"{self._line(self.t0)} (datatrove's log: {self.log_file})", file=self.terminal)
    self.thread = threading.Thread(target=self._watch, args=(self.t0,), daemon=True)
    self.thread.start()
    return self

  def __exit__(self, kind, *_):
    self.stop.set()
    self.thread.join()
    if kind is None:
      print(self._line(self.t0), file=self.terminal)
    return False


def _raise_if_incomplete(stages: list[Stage], log_file: Path | None = None) -> None:
  for stage in stages:
    if stage.done() < stage.tasks:
      where = log_file or f"{stage.logging_dir}/logs/ (and slurm_logs/)"
      raise StagesIncomplete(
        f"stage {stage.name}: {stage.done()}/{stage.tasks} tasks completed; see {where}; "
        "the same command again redoes only the unfinished tasks"
      )


# ----------------------------------------------------------------------------- Ray


def _ray_init(args) -> None:
  import ray

  if ray.is_initialized():
    return
  # Ray's workers import the pipeline's steps: this phi1_jax first on their path too.
  paths = [str(PACKAGE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
  runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
  if args.ray_address:
    ray.init(address=args.ray_address, runtime_env=runtime_env, log_to_driver=False)
  else:
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)


# ----------------------------------------------------------------------------- SLURM


def _env_command() -> str:
  """The first lines of every sbatch script: this python's scripts and this phi1_jax first."""
  return (
    f"export PATH={shlex.quote(_launcher_dir())}:\"$PATH\"; "
    f"export PYTHONPATH={shlex.quote(str(PACKAGE_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"
  )


def _squeue(ids: list[str]) -> dict[str, set[tuple[str, str]]] | None:
  """Array job id -> {(state, reason)} of those still queued (pending, running, completing); None
  when squeue cannot answer now."""
  if not ids:
    return {}
  proc = subprocess.run(
    ["squeue", "-h", "-j", ",".join(ids), "-o", "%F|%T|%r"], capture_output=True, text=True, timeout=60
  )
  if proc.returncode:
    return {} if "Invalid job id" in proc.stderr else None  # the former: every id has left the queue
  queued: dict[str, set] = {}
  for line in proc.stdout.splitlines():
    job, state, reason = line.split("|", 2)
    queued.setdefault(job, set()).add((state, reason))
  return queued


def _stuck(queued: dict) -> bool:
  """Nothing more will run: every queued job waits on a dependency, and one of those failed (the
  stages after it show plain `Dependency`: they wait on one that waits)."""
  rows = [r for rows in queued.values() for r in rows]
  return any(reason == "DependencyNeverSatisfied" for _, reason in rows) and all(
    state == "PENDING" and reason.startswith("Dependency") for state, reason in rows
  )


def _cancel_stuck(ids: list[str], log) -> None:
  """Cancels our jobs (and datatrove's stats-merging jobs hanging on them) that can never start."""
  proc = subprocess.run(["squeue", "-h", "-o", "%F|%E"], capture_output=True, text=True, timeout=60)
  hanging = {
    job
    for job, dep in (l.split("|", 1) for l in proc.stdout.splitlines())
    if set(re.findall(r":(\d+)", dep)) & set(ids)
  }
  cancel = sorted(set(_squeue(ids) or {}) | hanging)
  if cancel:
    subprocess.run(["scancel", *cancel], capture_output=True, timeout=60)
    log(f"slurm: cancelled jobs {','.join(cancel)}: they waited on a stage that failed")


def _progress(stages: list[Stage]) -> str:
  return ", ".join(f"{s.name} {s.done()}/{s.tasks}" for s in stages)


def _wait(ids: list[str], stages: list[Stage], log) -> None:
  t0 = last = time.time()
  log(f"slurm: waiting for jobs {','.join(ids)} (tasks done: {_progress(stages)})")
  while (queued := _squeue(ids)) != {}:
    if queued is None:  # the controller did not answer: ask again
      time.sleep(5)
      continue
    if _stuck(queued):
      _cancel_stuck(ids, log)
      break
    if time.time() - last >= _PROGRESS_EVERY_S:
      last = time.time()
      states = [state for rows in queued.values() for state, _ in rows]
      log(
        f"slurm: {states.count('RUNNING')} task(s) running, {states.count('PENDING')} job(s) pending; tasks done: "
        f"{_progress(stages)}; {last - t0:.0f} s"
      )
    time.sleep(1)
  if any(s.done() < s.tasks for s in stages):  # a task failed: datatrove's stats jobs after it can never start
    _cancel_stuck(ids, log)
  log(f"slurm: jobs left the queue after {time.time() - t0:.0f} s; tasks done: {_progress(stages)}")


def _slurm(args, stages: list[Stage], workers, job_prefix: str, state_dir: Path, log) -> bool:
  from datatrove.executor.slurm import SlurmPipelineExecutor

  jobs_file = state_dir / "slurm_jobs.json"
  earlier = json.loads(jobs_file.read_text())["jobs"] if jobs_file.is_file() else {}
  queued = _squeue(list(earlier.values()))
  if queued is None:
    raise ExecutorError("--executor=slurm: squeue does not answer; is slurmctld up?")
  if queued and _stuck(queued):
    _cancel_stuck(list(earlier.values()), log)
  elif queued:
    ids = list(earlier.values())
    if args.slurm_wait:
      _wait(ids, stages, log)
    else:
      log(
        f"slurm: jobs {','.join(ids)} of an earlier submission are still queued (tasks done: {_progress(stages)}); "
        f"follow them with `squeue -j {','.join(ids)}`; run this command again when they have left the queue"
      )
      return False
  if all(s.done() >= s.tasks for s in stages):
    return True

  executors, previous = [], None
  for stage in stages:
    previous = SlurmPipelineExecutor(
      stage.pipeline,
      tasks=stage.tasks,
      workers=workers or -1,
      time=args.slurm_time,
      partition=args.slurm_partition,
      cpus_per_task=args.slurm_cpus_per_task,
      sbatch_args={"mem-per-cpu": args.slurm_mem_per_cpu},
      logging_dir=str(stage.logging_dir),
      depends=previous,
      job_name=f"{job_prefix}-{stage.name}",
      env_command=_env_command(),
      qos=args.slurm_qos,
    )  # datatrove's default, "normal", is refused where no QOS has that name
    executors.append(previous)
  try:
    previous.launch_job()  # submits each unfinished stage after its dependency; completed tasks are skipped
  except subprocess.CalledProcessError as e:
    raise ExecutorError(f"sbatch failed ({e.returncode}); see its message above") from None
  finally:  # also when a later sbatch failed: a rerun must know the jobs already queued
    submitted = {s.name: str(e.job_id) for s, e in zip(stages, executors) if e.job_id not in (None, -1)}
    state_dir.mkdir(parents=True, exist_ok=True)
    jobs_file.write_text(json.dumps({"jobs": submitted, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
  ids = list(submitted.values())
  where = stages[0].logging_dir if len(stages) == 1 else f"{stages[0].logging_dir.parent}/<stage>"
  chained = " (each after the one before)" if len(submitted) > 1 else ""
  log(
    f"slurm: submitted {', '.join(f'{name} job {job}' for name, job in submitted.items())}{chained}; "
    f"task output in {where}/slurm_logs/"
  )
  if not args.slurm_wait:
    log(
      f"slurm: follow them with `squeue -j {','.join(ids)}`; run this command again when they have left the "
      "queue (or add --slurm_wait) to finish"
    )
    return False
  _wait(ids, stages, log)
  _raise_if_incomplete(stages)
  return True
