"""Runs model-written programs, each in a sandboxed subprocess, and says how each ended.

Each program runs in a fresh `python -I -S` subprocess (the child program, phi1_jax.eval.child)
in its own session (process group), inside the OS sandbox (`phi1_jax.eval.sandbox`: bubblewrap;
or, with sandbox="guard", in a fresh temporary working directory on the host), with a wall-clock
timeout, RLIMIT_AS (memory), RLIMIT_FSIZE (output and files), no core dumps, RLIMIT_NPROC unless
the program runs as root (which ignores it), stdin on /dev/null, output captured and truncated.

A sample passes only if the child writes "passed" with a secret nonce after the whole program
ran: `sys.exit(0)`, `os._exit(0)` or a crash before the end fail. The parent SIGKILLs the
program's whole group when it ends or overruns (timeout + 1 s, as official), and a sweep thread
kills processes that left their group (setsid) and groups of more than 16 processes (fork
bombs), found by an environment marker. The guard alone is not a security sandbox (ctypes, for
one, gets past it): the isolation is bubblewrap's.

Result strings: "passed" and "timed out" as official; "failed: <ExcType>: <message>" where
official writes "failed: <message>" (often just "failed: "); where official says "timed out"
for a child that died without a result, "failed: crashed (SIGSEGV)", "failed: exited without
result (code 0)" or "failed: more than 16 processes".
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import marshal
import os
import secrets
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time

from phi1_jax.eval import child as child_program
from phi1_jax.eval import sandbox as sandbox_lib

OUTPUT_CAP_BYTES = 64 * 1024  # output kept per program (sys.stdout/stderr text)
FILE_SIZE_CAP_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: any file the program writes
KILL_GRACE_S = 1.0  # wall clock beyond the timeout before SIGKILL (official: join(timeout + 1))
SWEEP_INTERVAL_S = 0.25  # how often stray processes and fork bombs are looked for
MAX_PROCESSES_PER_PROGRAM = 16  # a program's group beyond this is killed as a fork bomb
MARKER_ENV = "PHI1_EXEC_RUN"
CHILD_IN_SANDBOX = "/sandbox/child.py"  # where bubblewrap shows the child program, read-only
# Installed packages stay importable for programs, without running site's .pth hooks.
_SITE_PACKAGES = [path for path in site.getsitepackages() if os.path.isdir(path)]


@dataclasses.dataclass(frozen=True)
class ExecResult:
  """How one program ended: `result` is one of the strings the module docstring lists."""

  passed: bool
  result: str
  output: str = ""  # the program's stdout and stderr, truncated


def _signal_name(number: int) -> str:
  try:
    return signal.Signals(number).name
  except ValueError:
    return f"signal {number}"


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _wait_exit(pid: int, timeout_s: float) -> bool:
  """Wait for child `pid` to exit without reaping it; False if `timeout_s` passed first."""
  try:
    pidfd = os.pidfd_open(pid)
  except (AttributeError, OSError):  # no pidfd (old kernel): a timer thread kills at the deadline
    deadline_hit = threading.Event()
    timer = threading.Timer(timeout_s, lambda: (deadline_hit.set(), _kill_group(pid)))
    timer.start()
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    timer.cancel()
    return not deadline_hit.is_set()
  try:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))
  finally:
    os.close(pidfd)


def _wait_group_gone(pgid: int, limit_s: float = 1.0) -> None:
  """Wait (briefly) until SIGKILLed group members are dead and reaped by init."""
  deadline = time.monotonic() + limit_s
  while time.monotonic() < deadline:
    try:
      os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
      return
    time.sleep(0.002)


def _remove_tree(path: str) -> None:
  def make_writable_and_retry(function, failed_path, _):
    # A program may chmod its files read-only; give the owner rights back and retry.
    try:
      os.chmod(os.path.dirname(failed_path), 0o700)
      if os.path.isdir(failed_path) and not os.path.islink(failed_path):
        os.chmod(failed_path, 0o700)
      function(failed_path)
    except OSError:
      pass

  if sys.version_info >= (3, 12):
    shutil.rmtree(path, onexc=make_writable_and_retry)
  else:
    shutil.rmtree(path, onerror=make_writable_and_retry)


def _user_task_count(uid: int) -> int:
  """Processes and threads of real uid `uid`: the count RLIMIT_NPROC compares against."""
  count = 0
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
      if int(fields["Uid"].split()[0]) == uid:
        count += int(fields["Threads"])
    except (OSError, KeyError, ValueError):
      continue
  return count


class _Sandbox:
  """Launches programs and kills what they leave behind. One per execute_programs call."""

  def __init__(self, timeout_s: float, memory_mb: int, mode: str = "bwrap", progress_bar=None):
    self.timeout_s = timeout_s
    self.memory_bytes = int(memory_mb) * 1024 * 1024
    self.run_marker = secrets.token_hex(8)
    self.active_groups: set[int] = set()
    self.lock = threading.Lock()
    self.crowded_groups: set[int] = set()  # groups the sweep killed as fork bombs
    self.stopping = threading.Event()
    self.monitor = None
    self.progress_bar = progress_bar
    self.mode = mode
    env = {
      "PATH": os.environ.get("PATH", "/usr/bin:/bin") if mode == "guard" else "/usr/bin:/bin",
      "LANG": "C.UTF-8",
      "PYTHONIOENCODING": "utf-8",
      "OMP_NUM_THREADS": "1",
      MARKER_ENV: self.run_marker,
    }
    self.env = env if mode == "guard" else {**env, "HOME": "/tmp"}
    # bwrap and setpriv get only these variables too: nothing of the caller's reaches the sandbox.
    self.prefix = (
      sandbox_lib.bwrap_command(self.env, {CHILD_IN_SANDBOX: child_program.__file__}) if mode == "bwrap" else []
    )
    self.child_path = CHILD_IN_SANDBOX if mode == "bwrap" else child_program.__file__
    # Root ignores RLIMIT_NPROC (programs under bwrap run as nobody, not root); for others, allow
    # some headroom over what the uid runs already.
    program_uid = sandbox_lib.PROGRAM_UID if mode == "bwrap" and os.geteuid() == 0 else os.getuid()
    self.nproc = None if program_uid == 0 else _user_task_count(program_uid) + 64

  def run(self, program: str) -> ExecResult:
    if self.stopping.is_set():
      return ExecResult(passed=False, result="failed: cancelled")
    # Under bwrap the program works in its private /tmp; under the guard, in a host folder nested
    # one level down, so that what a program does to `..` stays in a folder of its own, not /tmp.
    own_dir = tempfile.mkdtemp(prefix="phi1_exec_") if self.mode == "guard" else None
    work_dir = os.path.join(own_dir, "work") if own_dir else "/"
    try:
      if own_dir:
        os.mkdir(work_dir)
      return self._run_in(work_dir, program)
    finally:
      if own_dir:
        _remove_tree(own_dir)
      if self.progress_bar is not None:
        self.progress_bar.update(1)

  def _run_in(self, work_dir: str, program: str) -> ExecResult:
    nonce = secrets.token_hex(16)
    # Unnamed files: a program cannot find, delete or forge them; the parent reads them back.
    with (
      tempfile.TemporaryFile() as job_file,
      tempfile.TemporaryFile() as result_file,
      tempfile.TemporaryFile() as output_file,
    ):
      job = {
        "nonce": nonce,
        "program": program,
        "result_fd": result_file.fileno(),
        "timeout_s": self.timeout_s,
        "memory_bytes": self.memory_bytes,
        "fsize_bytes": FILE_SIZE_CAP_BYTES,
        "nproc": self.nproc,
        "output_cap": OUTPUT_CAP_BYTES,
        "site_packages": _SITE_PACKAGES,
      }
      marshal.dump(job, job_file)  # the child reads it without importing anything
      job_file.seek(0)
      pgid, returncode, overran = self._launch_and_wait(job_file, result_file, output_file, work_dir)
      output_file.seek(0)
      output = output_file.read(OUTPUT_CAP_BYTES).decode("utf-8", "replace")
      result_file.seek(0)
      sent_nonce, _, status_bytes = result_file.read(4096).partition(b"\n")
    status = None
    if sent_nonce.decode("ascii", "replace") == nonce:
      status = status_bytes.decode("utf-8", "replace")
    elif pgid in self.crowded_groups:
      status = f"failed: more than {MAX_PROCESSES_PER_PROGRAM} processes"
    elif overran:
      status = "timed out"
    elif returncode < 0 or (self.mode == "bwrap" and returncode > 128):  # bwrap: 128 + signal
      status = f"failed: crashed ({_signal_name(-returncode if returncode < 0 else returncode - 128)})"
    else:
      status = f"failed: exited without result (code {returncode})"
    return ExecResult(passed=status == "passed", result=status, output=output)

  def _launch_and_wait(self, job_file, result_file, output_file, work_dir: str) -> tuple[int, int, bool]:
    """Run the child to its end or deadline, kill its group; (pgid, returncode, overran)."""
    # Launch and register under the lock, so the sweep never sees an unregistered program.
    with self.lock:
      process = subprocess.Popen(
        # -I: no user site, env or cwd on sys.path; -S: no .pth hooks at each start.
        self.prefix + [sys.executable, "-I", "-S", self.child_path],
        cwd=work_dir,
        env=self.env,
        stdin=job_file,
        stdout=output_file,
        stderr=subprocess.STDOUT,
        pass_fds=(result_file.fileno(),),
        # pgid == pid: one killpg ends every descendant (under bwrap, killing it ends its
        # PID namespace, and every process in it, too).
        start_new_session=True,
      )
      self.active_groups.add(process.pid)
    try:
      overran = not _wait_exit(process.pid, self.timeout_s + KILL_GRACE_S)
    finally:
      # SIGKILL, not SIGTERM: the program may ignore or handle catchable signals. The
      # leader is still unreaped here, so its group id cannot have been reused.
      _kill_group(process.pid)
      process.wait()
      _wait_group_gone(process.pid)
      with self.lock:
        self.active_groups.discard(process.pid)
    return process.pid, process.returncode, overran

  def sweep(self) -> int:
    """SIGKILL this run's processes that left their process group (e.g. via setsid), and
    whole groups with more than MAX_PROCESSES_PER_PROGRAM processes (fork bombs: root
    ignores RLIMIT_NPROC). Returns how many processes it killed."""
    with self.lock:
      active_groups = set(self.active_groups)
    marker = f"{MARKER_ENV}={self.run_marker}".encode()
    killed, group_sizes = 0, collections.Counter()
    if not os.path.isdir("/proc"):  # not Linux: only the group kill applies
      return 0
    for entry in os.listdir("/proc"):
      if not entry.isdigit():
        continue
      pid = int(entry)
      try:
        # A zombie's environ reads empty: only live processes match.
        with open(f"/proc/{pid}/environ", "rb") as environ:
          if marker not in environ.read().split(b"\0"):
            continue
        pgid = os.getpgid(pid)
        if pgid in active_groups:
          group_sizes[pgid] += 1
          continue
        with self.lock:  # a program launched since the snapshot is registered by now
          if pgid in self.active_groups:
            continue
          os.kill(pid, signal.SIGKILL)
        killed += 1
      except (OSError, ProcessLookupError):
        continue
    for pgid, size in group_sizes.items():
      if size > MAX_PROCESSES_PER_PROGRAM:
        with self.lock:
          self.crowded_groups.add(pgid)
        _kill_group(pgid)
        killed += size
    return killed

  def _monitor(self) -> None:
    while not self.stopping.wait(SWEEP_INTERVAL_S):
      self.sweep()

  def start(self) -> None:
    self.monitor = threading.Thread(target=self._monitor, name="sandbox-sweep", daemon=True)
    self.monitor.start()

  def stop(self, limit_s: float = 2.0) -> None:
    """Kill every running program and sweep until none of this run's processes is alive."""
    self.stopping.set()
    with self.lock:
      groups = list(self.active_groups)
    for pgid in groups:
      _kill_group(pgid)
    deadline = time.monotonic() + limit_s
    while self.sweep() and time.monotonic() < deadline:  # forks may race a single pass
      time.sleep(0.01)
    if self.monitor is not None:
      self.monitor.join()


def execute_programs(
  programs: list[str],
  *,
  timeout_s: float = 3.0,
  memory_mb: int = 1024,
  workers: int | None = None,
  progress: bool = False,
  sandbox: str = "bwrap",
) -> list[ExecResult]:
  """Run each program in its own sandboxed subprocess; results in the programs' order.

  sandbox: "bwrap" (the OS sandbox, phi1_jax.eval.sandbox) or "guard" (the subprocess guard
  only); sandbox.Unavailable (a ValueError) when bwrap cannot start here.
  """
  if timeout_s <= 0 or memory_mb <= 0:
    raise ValueError(f"timeout_s and memory_mb must be positive, got {timeout_s}, {memory_mb}")
  sandbox_lib.check(sandbox, quiet=True)
  workers = sandbox_lib.default_workers(sandbox) if workers is None else max(1, int(workers))
  progress_bar = None
  if progress:
    import tqdm

    progress_bar = tqdm.tqdm(total=len(programs), desc="executing", unit="program", file=sys.stderr)
  sandbox = _Sandbox(timeout_s, memory_mb, sandbox, progress_bar)
  sandbox.start()
  try:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      futures = [pool.submit(sandbox.run, program) for program in programs]
      try:
        return [future.result() for future in futures]
      except BaseException:
        # Ctrl-C or a harness error: drop queued work, kill what runs.
        for future in futures:
          future.cancel()
        sandbox.stop()
        raise
  finally:
    sandbox.stop()
    if progress_bar is not None:
      progress_bar.close()
