"""Checks shared by the command-line entry points, so a user mistake ends in one line before work."""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
  """A mistake in the user's input (a flag, a path, a file's contents): one line, exit code 2."""


def report_error(prog: str, message: object) -> int:
  """Prints the one line every command reports a user mistake with, `<prog>: error: <message>`; returns 2,
  the exit code, for a main() that returns its code."""
  print(f"{prog}: error: {message}".replace("\n", " "), file=sys.stderr, flush=True)
  return 2


def fail(prog: str, message: object) -> NoReturn:
  """Ends a command the way every command reports a user mistake: `<prog>: error: <message>`, exit 2."""
  sys.exit(report_error(prog, message))


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
  """--help as written (descriptions keep their line breaks), every flag that has a default showing it."""

  def _format_action(self, action):
    if action.option_strings and not action.help and _shown_default(action):
      action = copy.copy(action)  # a flag with no help text still shows its default
      action.help = "(default: %(default)s)"
    return super()._format_action(action)

  def _get_help_string(self, action):
    help_text = action.help or ""
    if action.option_strings and _shown_default(action) and "default" not in help_text:
      help_text += " (default: %(default)s)"
    return help_text


def _shown_default(action: argparse.Action) -> bool:
  """A default worth printing: a value, not 'unset' (None, [], '') nor an on/off flag's False."""
  return (
    action.nargs != 0 and action.default not in (None, argparse.SUPPRESS, "", []) and action.help != argparse.SUPPRESS
  )


class OneLineParser(argparse.ArgumentParser):
  """argparse that reports a bad flag in one line (no usage block), exit code 2; --help shows the defaults."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
    super().__init__(*args, **kwargs)
    self._old_names: dict[str, str] = {}

  def add_old_name(self, old: str, new: str) -> None:
    """Accepts the flag `old` as `new` (a renamed flag keeps working), without showing it in --help."""
    self._old_names[old] = new

  def parse_known_args(self, args=None, namespace=None):
    args = [self._renamed(a) for a in (sys.argv[1:] if args is None else args)]
    self._arg_strings = args  # for error() to look at again
    return super().parse_known_args(args, namespace)

  def _renamed(self, arg: str) -> str:
    name, eq, value = arg.partition("=")
    return self._old_names[name] + eq + value if name in self._old_names else arg

  def error(self, message):
    if message.startswith("the following arguments are required") and not getattr(self, "_probing", False):
      # argparse checks required flags before it reports unknown ones: `--checkpont=x` alone would
      # say "required: --checkpoint" and hide the misspelt flag; name both
      extras = self._unrecognized()
      if extras:
        message = f"unrecognized arguments: {' '.join(extras)}; {message}"
    self.exit(2, f"{self.prog}: error: {message}\n")

  def _unrecognized(self) -> list[str]:
    """The arguments the last parse did not recognize, found by parsing them again with no flag required."""
    required = [a for a in self._actions if a.required]
    for a in required:
      a.required = False
    self._probing = True
    try:
      return super().parse_known_args(self._arg_strings)[1]
    except SystemExit:  # another problem: the required message stands alone
      return []
    finally:
      self._probing = False
      for a in required:
        a.required = True


def out_dir_problem(path: str | os.PathLike) -> str | None:
  """Why `path` cannot be (or become) an output folder, or None if it can; callers prefix the flag.

  Checks what a later mkdir/write would trip on, so the command fails before its long work:
  `path` is a file, a parent of it is a file, or the nearest existing folder is not writable.
  """
  p = Path(path)
  if p.exists() and not p.is_dir():
    return "exists and is not a folder"
  existing = p
  while not existing.exists():  # the folder mkdir(parents=True) would start from
    if existing.parent == existing:
      break
    existing = existing.parent
  if existing != p and not existing.is_dir():
    return f"{existing} is a file, not a folder"
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"{existing} is not writable"
  return None


# ----------------------------------------------------------------------------- stopping


def stop_on_signals() -> None:
  """SIGTERM (a process manager, `kill`, SLURM) stops a command as Ctrl-C does: KeyboardInterrupt."""

  def interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)

  signal.signal(signal.SIGTERM, interrupt)
  signal.signal(signal.SIGINT, interrupt)


def descendants(pid: int | None = None) -> list[int]:
  """Every living process below `pid` (default: this one), children first, read from /proc."""
  pid = os.getpid() if pid is None else pid
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat", "rb") as f:
        stat = f.read()
    except OSError:  # gone meanwhile
      continue
    ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # after "(comm)": state, ppid
    children.setdefault(ppid, []).append(int(entry))
  found, todo = [], [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      found.append(child)
      todo.append(child)
  return found


def die_with_parent() -> None:
  """For subprocess.Popen(preexec_fn=...): the kernel sends the child SIGKILL when this process dies,
  SIGKILL included (PR_SET_PDEATHSIG), so no child outlives a killed command."""
  import ctypes

  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def kill_descendants() -> None:
  """SIGKILL every process this one started (worker pools, sandboxes): none outlives the command."""
  for pid in descendants():
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass


def run_command(main: Callable[[], int | None], kept: str) -> int:
  """Runs a command's main under the stop rule every command shares.

  SIGINT or SIGTERM ends it within seconds with one line (what was kept, that a rerun resumes),
  no traceback and no process left behind, exit code 130. `kept` says what survives, e.g.
  "the annotations written so far are kept". os._exit skips interpreter teardown, where worker
  threads and asyncio loops that were cut short print pages of tracebacks.
  """
  stop_on_signals()
  try:
    return main() or 0
  except KeyboardInterrupt as e:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    name = e.args[0] if e.args and isinstance(e.args[0], str) else "SIGINT"
    kill_descendants()
    sys.stdout.flush()
    print(f"stopped by {name}: {kept}; rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(130)


# ----------------------------------------------------------------------------- reruns


def settings_diff(old: dict, new: dict) -> list[str]:
  """`key old -> new` for every setting that differs, sorted by key."""
  return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def already_done(out_dir: str | os.PathLike, settings: dict, product: str, flag: str = "--out") -> bool:
  """The rerun rule every stage shares, for an output folder that `product` (a file name) completes.

  True: `out_dir` holds `product` made with these settings, so the command has nothing to do (it
  says so and exits 0). False: no `product` yet; the settings are recorded in settings.json for
  the next rerun. A `product` made with other settings is never overwritten: ValueError naming
  every setting that differs, for the caller's one-line error.
  """
  out = Path(out_dir)
  record = out / "settings.json"
  if (out / product).exists():
    if not record.exists():
      raise ValueError(f"{flag}={out} already holds {product} with no settings.json beside it; choose another {flag}")
    diff = settings_diff(json.loads(record.read_text()), settings)
    if diff:
      raise ValueError(
        f"{flag}={out} holds {product} made with other settings ({'; '.join(diff)}); choose another {flag}"
      )
    return True
  out.mkdir(parents=True, exist_ok=True)
  tmp = record.with_suffix(".tmp")
  tmp.write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
  os.replace(tmp, record)
  return False
