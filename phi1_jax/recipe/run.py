"""Runs a recipe's graph: each unfinished step as its stage's own command, a child process of this one.

A step whose provenance says "completed" is reused, whichever recipe made it. A step that was
started and not finished (the recipe was killed) is started again in the same folder: the stages
resume from what they kept (trainer checkpoints, annotation caches, finished shards). A failed
step stops the steps that read from it, not the others; the run ends with exit code 1 and one line
per failed step naming its log. Each child dies with this process (PR_SET_PDEATHSIG), so a
SIGKILLed recipe leaves no stage running; SIGINT / SIGTERM are passed to the running stage, which
stops the way it always does (a trainer saves a checkpoint), then the recipe exits 130.

A train step with launcher "slurm" is `sbatch --wait launch/slurm.sbatch ...`: SLURM writes the
job's output to the step's log, sbatch's exit code (the job's) is the step's, SIGINT / SIGTERM
cancel the job (scancel). A SIGKILLed recipe leaves its job running; the rerun refuses the step,
naming the job, until it has ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from phi1_jax.cli import UserError, die_with_parent, settings_diff
from phi1_jax.recipe import graph as graph_lib
from phi1_jax.recipe import slurm
from phi1_jax.recipe.services import Services
from phi1_jax.recipe.steps import ServiceURL


def code_version() -> str:
  """The checkout's commit (with "+dirty" for uncommitted changes), else the installed version."""
  repo = Path(__file__).resolve().parents[2]
  try:
    commit = subprocess.run(
      ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return commit + ("+dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    from importlib.metadata import version

    return f"phi1_jax {version('phi1_jax')}"


def flatten(identity: dict) -> dict:
  """An identity as `flag -> value` strings, for naming what differs between two of them."""
  flat = {"version": identity.get("version", "")}
  for key, value in identity["args"].items():
    flat[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
  return flat


def why(graph: graph_lib.Graph, name: str, previous: dict | None) -> str:
  """Why `name` must run: interrupted, first time, or what changed since this recipe's last run."""
  folder = graph.folder(name)
  if graph_lib.state(folder) == "interrupted":
    return "resumes an interrupted run"
  previous = previous or {}
  old = previous.get(name)
  if old is None:
    return "new step"
  if old["hash"] == graph.hash[name]:
    return "not run yet" if not (folder / "provenance.json").exists() else "its output folder is gone"
  changed_inputs = sorted({u for u in graph.upstream(name) if previous.get(u, {}).get("hash") != graph.hash[u]})
  if changed_inputs:
    return f"its input changed: {', '.join(changed_inputs)}"
  diff = settings_diff(flatten(old["identity"]), flatten(graph.identity[name]))
  return "new settings: " + "; ".join(d if len(d) < 160 else d[:157] + "..." for d in diff)


def plan(graph: graph_lib.Graph, previous: dict | None) -> list[tuple[str, str, str]]:
  """(step, "cached" | "run", reason) in run order."""
  rows = []
  for step in graph.steps:
    if graph_lib.state(graph.folder(step.name)) == "done":
      rows.append((step.name, "cached", ""))
    else:
      rows.append((step.name, "run", why(graph, step.name, previous)))
  return rows


def _copy_line(line: bytes, log_file, prefix: str, echo: bool) -> None:
  """One line of the child's output to its log, and (with echo) to this terminal with the step's name."""
  log_file.write(line)
  log_file.flush()
  if echo:
    sys.stdout.write(f"{prefix} {line.decode(errors='replace')}")
    sys.stdout.flush()


def _echo(stream, log_file, prefix: str, echo: bool) -> None:
  for line in iter(stream.readline, b""):
    _copy_line(line, log_file, prefix, echo)


def run_step(graph: graph_lib.Graph, name: str, services: Services, *, sbatch_args: str, echo: bool) -> int:
  """Runs one step to its end; returns the stage's exit code. Provenance records every attempt."""
  step = graph.by_name[name]
  folder = graph.folder(name)
  folder.mkdir(parents=True, exist_ok=True)
  lock = open(folder / ".lock", "w")  # noqa: SIM115 (held for the step's whole run)
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.close()
    raise UserError(f"step {name}: {folder} is being run by another process; wait for it or stop it") from None
  try:
    urls = {ref.service: services.url(ref.service) for ref in step.inputs() if isinstance(ref, ServiceURL)}
    argv = [sys.executable, *graph.argv(name, urls)]
    log_path = folder / "log.txt"
    env = None
    if step.launcher == "slurm":
      argv, env = slurm.command(name, argv[3:], log_path, sbatch_args)  # argv[3:]: after python -m phi1_jax.train
    record = graph_lib.read_provenance(folder) or {
      "step": name,
      "command": step.command,
      "hash": graph.hash[name],
      "identity": graph.identity[name],
      "attempts": [],
      "completed": False,
    }
    record["names"] = sorted(set(record.get("names", [])) | {f"{graph.recipe.name}:{name}"})
    if step.launcher == "slurm":
      slurm.refuse_if_job_left(name, record)
    attempt = {
      "started": time.time(),
      "argv": argv,
      "code_version": code_version(),
      "host": platform.node(),
      "pid": os.getpid(),
    }
    record["attempts"].append(attempt)
    graph_lib.write_provenance(folder, record)
    with open(log_path, "ab") as log_file:
      log_file.write(f"\n### {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
      log_file.flush()
      proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent, env=env
      )
      job_id = ""
      try:
        if step.launcher == "slurm":
          first_line = proc.stdout.readline()  # sbatch's "Submitted batch job N"
          _copy_line(first_line, log_file, f"[{name}]", echo)
          job_id = slurm.job_id(first_line)
          if job_id:  # kept so that a rerun after a SIGKILL finds the job it left behind
            attempt["slurm_job"] = job_id
            graph_lib.write_provenance(folder, record)
        copier = threading.Thread(target=_echo, args=(proc.stdout, log_file, f"[{name}]", echo), daemon=True)
        copier.start()
        rc = proc.wait()
      except KeyboardInterrupt:
        # The stage stops as it always does (a trainer checkpoints). A signal to `sbatch --wait` ends sbatch
        # and leaves the job running, so the job is cancelled first and sbatch stopped once it has ended.
        if job_id:
          slurm.cancel_job(job_id)
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
          proc.wait(timeout=120)
        raise
      copier.join(timeout=10)
    attempt["ended"] = time.time()
    attempt["exit_code"] = rc
    if rc == 0:
      from phi1_jax.recipe import outcomes

      record["completed"] = True
      record["ended"] = attempt["ended"]
      record["wall_s"] = round(attempt["ended"] - attempt["started"], 1)
      record["counts"] = outcomes.outcome(step.command, folder / "out")
    graph_lib.write_provenance(folder, record)
    return rc
  finally:
    lock.close()


def index_path(root: Path, recipe_name: str) -> Path:
  return root / "recipes" / f"{recipe_name}.json"


def read_index(root: Path, recipe_name: str) -> dict | None:
  try:
    return json.loads(index_path(root, recipe_name).read_text())
  except (OSError, ValueError):
    return None


def write_index(graph: graph_lib.Graph, recipe_file: str, settings: dict) -> None:
  """ROOT/recipes/<name>.json: which folder holds each of the recipe's steps (what `report` reads)."""
  recipe = graph.recipe
  index = {
    "recipe": recipe.name,
    "file": recipe_file,
    "settings": settings,
    "variants": recipe.variants,
    "expected": recipe.expected,
    "wiring_test": recipe.wiring_test,
    "notes": recipe.notes,
    "stand_ins": [f"{s.name}: {s.stand_in}" for s in recipe.services],
    "steps": {
      s.name: {
        "command": s.command,
        "hash": graph.hash[s.name],
        "folder": str(graph.folder(s.name).relative_to(graph.root)),
        "identity": graph.identity[s.name],
        "info": s.info,
      }
      for s in graph.steps
    },
  }
  path = index_path(graph.root, recipe.name)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(index, indent=1, default=str))
  os.replace(tmp, path)


def _minutes_left(graph: graph_lib.Graph, names: list[str], took_by_command: dict[str, list[float]]) -> float:
  """Each step still to run at the mean time its command has taken so far (a train step is not a pack step)."""
  every = [t for times in took_by_command.values() for t in times]
  overall = sum(every) / len(every)
  left = 0.0
  for name in names:
    times = took_by_command.get(graph.by_name[name].command)
    left += sum(times) / len(times) if times else overall
  return left / 60


def execute(
  graph: graph_lib.Graph, rows: list[tuple[str, str, str]], *, sbatch_args: str = "", echo: bool = True, log=print
) -> int:
  """Runs the steps `rows` marks "run", in order; 0 when every step is done at the end, else 1."""
  services = Services(graph.services, graph.root / "services")
  events_path = graph.root / "recipes" / f"{graph.recipe.name}.events.jsonl"

  def event(name: str, what: str, **fields) -> None:
    """One line per step event, for plotting a run's timeline."""
    with open(events_path, "a") as f:
      f.write(json.dumps({"time": round(time.time(), 3), "step": name, "event": what, **fields}) + "\n")

  failed: dict[str, str] = {}
  skipped: set[str] = set()
  to_run = [name for name, action, _ in rows if action == "run"]
  took_by_command: dict[str, list[float]] = {}
  if any(graph.by_name[name].launcher == "slurm" for name in to_run):
    slurm.launch_script()  # no sbatch here: say so before the first step, not after the ones before it
  started = time.monotonic()
  try:
    for k, name in enumerate(to_run, 1):
      blocked = [u for u in graph.upstream(name) if u in failed or u in skipped]
      if blocked:
        skipped.add(name)
        event(name, "not run", input=blocked[0])
        log(f"recipe: [{k}/{len(to_run)}] {name}: not run, its input {blocked[0]} did not finish")
        continue
      log(f"recipe: [{k}/{len(to_run)}] {name} ({graph.by_name[name].command}) in {graph.folder(name)}")
      event(name, "start", command=graph.by_name[name].command, folder=str(graph.folder(name)))
      t0 = time.monotonic()
      rc = run_step(graph, name, services, sbatch_args=sbatch_args, echo=echo)
      took = time.monotonic() - t0
      elapsed = time.monotonic() - started
      left = len(to_run) - k
      event(name, "done" if rc == 0 else "failed", exit_code=rc, wall_s=round(took, 1))
      if rc != 0:
        failed[name] = str(graph.folder(name) / "log.txt")
        log(f"recipe: error: step {name} failed (exit code {rc}); its log: {failed[name]}")
      else:
        took_by_command.setdefault(graph.by_name[name].command, []).append(took)
        eta = f", about {_minutes_left(graph, to_run[k:], took_by_command):.0f} min left" if left else ""
        log(f"recipe: [{k}/{len(to_run)}] {name} done in {took:.0f} s ({elapsed / 60:.1f} min so far{eta})")
  finally:
    services.stop()
  if failed or skipped:
    for name, log_file in failed.items():
      log(f"recipe: error: step {name} failed; its log: {log_file}")
    if skipped:
      log(f"recipe: {len(skipped)} step(s) not run because an input failed: {', '.join(sorted(skipped))}")
    return 1
  return 0
