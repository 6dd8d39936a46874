"""The command `python -m phi1_jax.train --config=configs/X.py --workdir=DIR [--config.FIELD=VALUE ...]`:
its flags, a user mistake in one line (exit 2), joining the other processes, then `loop.train`."""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import jax
from absl import flags, logging
from ml_collections import config_flags

from phi1_jax import paths
from phi1_jax.cli import UserError, fail
from phi1_jax.train.checkpoints import DiskFull
from phi1_jax.train.checks import end_step_of
from phi1_jax.train.inputs import ensure_stdlib
from phi1_jax.train.loop import train
from phi1_jax.train.workdir import finished_message

PROG = "python -m phi1_jax.train"
CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file (configs/*.py).")
WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, config.")


def init_distributed(config):
  d = config.distributed
  if d.coordinator_address or d.auto:
    kwargs = {}
    if d.coordinator_address:
      kwargs = dict(coordinator_address=d.coordinator_address, num_processes=d.num_processes, process_id=d.process_id)
    jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    fail(PROG, f"unexpected arguments: {' '.join(argv[1:])}")
  if CONFIG.value is None or WORKDIR.value is None:
    fail(PROG, "--config and --workdir are required")
  config = CONFIG.value
  try:
    config.distributed  # ml_collections defers a config file's load error to the first access
  except OSError as e:
    fail(PROG, f"--config: {str(e).splitlines()[0]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  try:
    distributed = config.distributed.coordinator_address or config.distributed.auto
    if (
      distributed
      and config.data.mixture.strip() == "stdlib"
      and not finished_message(config, paths.as_path(WORKDIR.value), end_step_of(config))
    ):
      # Build shared data before joining the other processes: one builds while the rest wait on a
      # file lock, and no collective or coordination timeout runs meanwhile.
      ensure_stdlib(config)
    init_distributed(config)
    train(config, WORKDIR.value)
    # Saved and done: a late SIGTERM (another node's, a launcher stopping the rest) must not make
    # jax's shutdown, which waits for the other processes, end in a failure exit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
  except UserError as e:
    fail(PROG, e)
  except FloatingPointError:
    sys.exit(1)
  except DiskFull as e:
    print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)  # exit 1: not a user mistake
    sys.stdout.flush()
    os._exit(1)  # Orbax's writer threads and event loops, cut short, print pages at interpreter exit


def parse_flags(argv):
  """absl flag parsing with a one-line error (a bad override names the key and the problem)."""
  path = config_path(argv)
  if path is not None and not Path(path).is_file():  # ml_collections would bury this in two tracebacks
    fail(PROG, f"--config {path}: " + ("a folder, not a config file" if Path(path).is_dir() else "no such file"))
  try:
    return flags.FLAGS(argv)
  except SystemExit as stop:  # absl ends the help it was asked for with exit code 1: no failure
    helped = any(a.split("=")[0] in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in argv[1:])
    sys.exit(0 if helped and stop.code == 1 else stop.code)
  except flags.Error as e:
    fail(PROG, e)
  except (AttributeError, KeyError) as e:  # ml_collections: an override key the config lacks
    text = str(e).encode().decode("unicode_escape")
    key = re.search(r"'(\w+)'", text)
    hint = re.search(r'Did you mean "(\w+)"', text)
    fail(
      PROG,
      f"unknown config key {key.group(1) if key else text!r} in the overrides"
      + (f" (did you mean {hint.group(1)!r}?)" if hint else ""),
    )


def config_path(argv) -> str | None:
  """The file named by --config in argv ("--config=F", "--config F", "F:arg" forms), or None."""
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1].split(":", 1)[0]
  return None
