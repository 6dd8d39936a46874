"""The local executor: the plan's unfinished trials on this machine, `parallel` at a time.

Each trainer is a subprocess started from this (main) thread; its output goes to its attempt log
and is echoed here with the trial's name in front. A trial whose lock another process holds (a
trainer left behind by a killed sweep, or a second sweep on the same root) is taken up once that
process lets go. SIGINT / SIGTERM stop the trainers (they save a checkpoint) and the sweep.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from phi1_jax.sweep import spec as spec_lib
from phi1_jax.sweep import trials as trial_lib
from phi1_jax.train.metrics import duration

TRAINER = [sys.executable, "-m", "phi1_jax.train"]
_POLL_S = 0.2


def gpu_ids() -> list[str]:
  """The GPUs trials may be spread over: CUDA_VISIBLE_DEVICES, else those nvidia-smi lists."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [d for d in visible.split(",") if d.strip()]
  if not shutil.which("nvidia-smi"):
    return []
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def slot_envs(parallel: int, gpus: list[str]) -> list[dict | None]:
  """Environment of each of `parallel` slots: their own GPUs where there are enough, else shared
  GPUs with a share of the memory each (JAX takes 75% of a GPU by default)."""
  if parallel == 1 or not gpus:
    return [None] * parallel
  if len(gpus) >= parallel:
    n = len(gpus) // parallel
    return [{**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus[k * n : (k + 1) * n])} for k in range(parallel)]
  per_gpu = math.ceil(parallel / len(gpus))
  return [
    {
      **os.environ,
      "CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)],
      "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / per_gpu:.2f}",
    }
    for k in range(parallel)
  ]


def _summary(root: Path, trial: dict) -> str:
  from phi1_jax.sweep import report

  row = report.trial_row(root, trial)
  parts = [row["status"]]
  if row["final_eval_loss"] is not None:
    parts.append(f"eval_loss {row['final_eval_loss']:.4f}")
  return ", ".join(parts)


def run(root: Path, plan: dict, parallel: int, log=print) -> int:
  """Runs every unfinished trial; 0 when all are finished at the end, else 1 (or 128+signal)."""
  trials = plan["trials"]
  states = {t["name"]: trial_lib.status(root, t) for t in trials}
  counts = {s: n for s in trial_lib.STATUSES if (n := list(states.values()).count(s))}
  log(
    f"sweep {root}: {len(trials)} trials ("
    + ", ".join(f"{n} {s}" for s, n in counts.items())
    + f"); {parallel} at a time"
  )
  for t in trials:
    if states[t["name"]] == "finished":
      log(f"skip {t['name']}: finished")
    elif states[t["name"]] == "diverged":
      log(f"skip {t['name']}: diverged (loss NaN/inf) in its last attempt; delete its folder to run it again")
  todo = [t for t in trials if states[t["name"]] not in ("finished", "diverged")]
  gpus = gpu_ids()
  envs = slot_envs(parallel, gpus)
  if parallel > 1 and gpus:
    log(f"{len(gpus)} GPUs over {parallel} slots: " + "; ".join(e["CUDA_VISIBLE_DEVICES"] for e in envs))

  stop: list[int] = []
  old_handlers = {
    s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
  }
  running: dict[int, trial_lib.Attempt] = {}  # slot -> attempt
  waiting_noted: set[str] = set()
  done_times: list[float] = []
  n_todo = len(todo)
  try:
    while (todo and not stop) or running:
      for slot in [s for s in range(parallel) if s not in running]:
        if stop:
          break
        started = _start_next(root, plan, todo, envs[slot], waiting_noted, log)
        if started is None:
          break
        running[slot] = started
      if stop:
        for a in running.values():
          if a.proc.poll() is None and not a.stop_sent:
            a.proc.send_signal(signal.SIGTERM)
            a.stop_sent = True
      for slot, a in list(running.items()):
        rc = a.poll()
        for line in a.new_lines():
          log(f"[{a.trial['name']}] {line}")
        if rc is None:
          continue
        del running[slot]
        a.close()
        elapsed = time.time() - a.start
        done_times.append(elapsed)
        left = len(todo) + len(running)
        eta = duration(sum(done_times) / len(done_times) * math.ceil(left / parallel)) if left else "0m00s"
        end = f"exit code {rc}, " if rc else ""
        log(
          f"[{n_todo - left}/{n_todo}] {a.trial['name']}: {end}{_summary(root, a.trial)} after "
          f"{duration(elapsed)}; sweep ETA {eta}"
        )
      time.sleep(_POLL_S)
  finally:
    for s, h in old_handlers.items():
      signal.signal(s, h)
  states = {t["name"]: trial_lib.status(root, t) for t in trials}
  unfinished = [n for n, s in states.items() if s != "finished"]
  if stop:
    log(
      f"stopped by signal {signal.Signals(stop[0]).name}; {len(unfinished)} trials unfinished: "
      "rerun the same command to resume them"
    )
    return 128 + stop[0]
  log(
    f"sweep {root}: {len(trials) - len(unfinished)}/{len(trials)} finished"
    + ("" if not unfinished else "; not finished: " + ", ".join(f"{n} ({states[n]})" for n in unfinished))
    + f". Report: python -m phi1_jax.sweep report --root={root}"
  )
  return 1 if unfinished else 0


def _start_next(root, plan, todo: list[dict], env, waiting_noted: set, log) -> trial_lib.Attempt | None:
  """Starts the first trial in `todo` whose lock is free (removing it and any found finished)."""
  for trial in list(todo):
    lock = trial_lib.Lock(root, trial)
    if not lock.acquire():
      lock.close()
      if trial["name"] not in waiting_noted:
        waiting_noted.add(trial["name"])
        log(f"wait {trial['name']}: another process is running it")
      continue
    todo.remove(trial)
    if trial_lib.is_finished(root, trial):  # the other process finished it
      lock.close()
      log(f"skip {trial['name']}: finished")
      continue
    attempt = trial_lib.Attempt(root, trial, lock, TRAINER + spec_lib.trainer_args(plan, trial, root), env)
    how = f"resume from step {attempt.resumed_from}" if attempt.resumed_from is not None else "start"
    log(f"{how} {trial['name']} (attempt {attempt.number}, log {attempt.log_path})")
    return attempt
  return None
