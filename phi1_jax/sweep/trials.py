"""One trial on disk: its status, its lock, its attempts, and starting its trainer process.

A trial's folder ROOT/NAME is the trainer's workdir (checkpoints/, metrics.jsonl, ...); the sweep
keeps its own records in ROOT/NAME/sweep/: `lock` (held while a trainer runs on the folder),
`attempts.jsonl` (one row when an attempt starts, one when it ends) and `attempt-K.log` (the
trainer's output). "Finished" is read from the workdir itself: the checkpoint of the run's last
step exists (Orbax renames a checkpoint into place only once it is complete).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

STATUSES = ("finished", "running", "partial", "failed", "diverged", "pending")
_DIVERGED = re.compile(r"(loss|grad_norm) is (nan|inf) at step \d+")


def workdir(root: Path, trial: dict) -> Path:
  return Path(root) / trial["name"]


def checkpoint_steps(wd: Path) -> list[int]:
  folder = wd / "checkpoints"
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def is_finished(root: Path, trial: dict) -> bool:
  return (workdir(root, trial) / "checkpoints" / str(trial["end_step"])).is_dir()


def attempts(root: Path, trial: dict) -> list[dict]:
  """[{attempt, start, host, end?, returncode?}], the start and end rows of each attempt merged."""
  merged: dict[int, dict] = {}
  for row in jsonl_rows(workdir(root, trial) / "sweep" / "attempts.jsonl"):
    merged.setdefault(row["attempt"], {}).update(row)
  return [merged[k] for k in sorted(merged)]


def jsonl_rows(path: Path) -> list[dict]:
  """A JSONL file's rows; none when it is missing, and a last line cut short by a kill is skipped."""
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def attempt_log(root: Path, trial: dict, attempt: int) -> Path:
  return workdir(root, trial) / "sweep" / f"attempt-{attempt}.log"


def wall_seconds(root: Path, trial: dict) -> float:
  """Time spent in attempts; a killed attempt (no end row) lasted until its log was last written."""
  total = 0.0
  for a in attempts(root, trial):
    log = attempt_log(root, trial, a["attempt"])
    end = a.get("end") or (log.stat().st_mtime if log.exists() else a["start"])
    total += max(end - a["start"], 0.0)
  return total


class Lock:
  """An flock on ROOT/NAME/sweep/lock. The trainer inherits the descriptor, so the lock stays held
  while the trainer runs even if the sweep that started it is gone."""

  def __init__(self, root: Path, trial: dict):
    folder = workdir(root, trial) / "sweep"
    folder.mkdir(parents=True, exist_ok=True)
    self.fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)

  def acquire(self, block: bool = False) -> bool:
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
      return True
    except BlockingIOError:
      return False

  def close(self):
    if self.fd is not None:
      os.close(self.fd)
      self.fd = None


def is_running(root: Path, trial: dict) -> bool:
  if not (workdir(root, trial) / "sweep" / "lock").exists():
    return False
  lock = Lock(root, trial)
  try:
    return not lock.acquire()
  finally:
    lock.close()


def status(root: Path, trial: dict) -> str:
  """finished, running, diverged (NaN/inf loss: a rerun would diverge again), failed, partial, pending."""
  if is_finished(root, trial):
    return "finished"
  if is_running(root, trial):
    return "running"
  tries = attempts(root, trial)
  if tries and tries[-1].get("returncode", 0) != 0:
    log = attempt_log(root, trial, tries[-1]["attempt"])
    return "diverged" if log.exists() and _DIVERGED.search(log.read_text(errors="replace")) else "failed"
  return "partial" if tries or checkpoint_steps(workdir(root, trial)) else "pending"


# Run in front of the trainer: SIGTERM when the sweep dies (the trainer then saves a checkpoint and
# exits), then exec. A wrapper rather than Popen's preexec_fn: no Python runs in a forked copy of a
# process that may have started JAX's threads. The setting survives exec (the trainer is not setuid).
_STOP_WITH_PARENT = """import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):  # the sweep died before prctl
  sys.exit(143)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _stop_with_parent(command: list[str]) -> list[str]:
  if not sys.platform.startswith("linux"):
    return command
  return [sys.executable, "-c", _STOP_WITH_PARENT, str(os.getpid()), *command]


class Attempt:
  """A trainer process running one trial, its output going to attempt-K.log."""

  def __init__(self, root: Path, trial: dict, lock: Lock, command: list[str], env: dict | None = None):
    self.root, self.trial, self.lock = Path(root), trial, lock
    self.number = len(attempts(root, trial)) + 1
    self.log_path = attempt_log(root, trial, self.number)
    self.resumed_from = (checkpoint_steps(workdir(root, trial)) or [None])[-1]
    self.start = time.time()
    self.stop_sent = False  # SIGTERM sent (the sweep is stopping)
    self._record(
      dict(
        attempt=self.number, start=self.start, host=socket.gethostname(), resume_from=self.resumed_from, command=command
      )
    )
    with open(self.log_path, "ab") as log:
      # Started from the calling thread, which must outlive the trainer (PDEATHSIG is per thread).
      self.proc = subprocess.Popen(
        _stop_with_parent(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        pass_fds=(lock.fd,),
      )
    self._log = open(self.log_path, "rb")
    self._partial = b""

  def _record(self, row: dict):
    with open(workdir(self.root, self.trial) / "sweep" / "attempts.jsonl", "a") as f:
      f.write(json.dumps(row) + "\n")

  def new_lines(self) -> list[str]:
    """Complete lines the trainer wrote since the last call."""
    data = self._partial + self._log.read()
    *lines, self._partial = data.split(b"\n")
    return [line.decode(errors="replace").rstrip("\r") for line in lines]

  def poll(self) -> int | None:
    rc = self.proc.poll()
    if rc is not None and self.lock is not None:
      self._record(dict(attempt=self.number, end=time.time(), returncode=rc))
      self.lock.close()
      self.lock = None
    return rc

  def close(self):
    self._log.close()
