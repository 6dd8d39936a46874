r"""Hyperparameter sweeps over config overrides, resumable, with a results table and plots.

    python -m phi1_jax.sweep --config=configs/tiny.py --root=runs/sweep1 \
        --grid=optimizer.lr=1e-3,3e-3,1e-2 --grid=optimizer.warmup_steps=10,30 \
        [--random=N --space='optimizer.lr=loguniform(1e-4,1e-2)' --seed=0] [--set=total_steps=200] \
        [--executor=local|slurm] [--parallel=P] [--sbatch_args='--partition=gpu --gpus=1']
    python -m phi1_jax.sweep report --root=runs/sweep1 [--metric=final_eval_loss] [--mode=min|max]

--grid KEY=V1,V2,...: every combination of the grids' values (values holding commas: V1|V2).
--random N with --space KEY=DIST(ARGS): N draws (seeded by --seed) of uniform(lo,hi),
loguniform(lo,hi), randint(lo,hi) or choice(v1,v2,...); with grids too, each draw meets every grid point.
--set KEY=VALUE: an override common to all trials. Keys may start with `config.` or not.

Everything is type-checked against the config before anything runs (one line, exit code 2).
Trial I runs in ROOT/II_key=value,...; ROOT/sweep.json holds the plan. Running the same command
again skips finished trials and resumes the others from their checkpoints.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from phi1_jax.sweep import spec as spec_lib
from phi1_jax.cli import OneLineParser, UserError, report_error

PROG = "python -m phi1_jax.sweep"


def _sweep_parser() -> argparse.ArgumentParser:
  p = OneLineParser(prog=PROG, description=__doc__)
  p.add_argument("--config", required=True, help="trainer config file (configs/*.py)")
  p.add_argument("--root", required=True, help="sweep folder: sweep.json and one workdir per trial")
  p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,... (repeatable)")
  p.add_argument("--space", action="append", default=[], help="KEY=DIST(ARGS) for --random (repeatable)")
  p.add_argument("--random", type=int, default=0, help="draws from --space")
  p.add_argument("--seed", type=int, default=0, help="seed of the --random draws")
  p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every trial (repeatable)")
  p.add_argument("--executor", choices=("local", "slurm"), default="local")
  p.add_argument(
    "--parallel",
    type=int,
    default=None,
    help="trials at a time (local: default 1, each on its own GPUs where there are enough; slurm: default all)",
  )
  p.add_argument("--sbatch_args", default="", help="extra sbatch options for --executor=slurm")
  return p


def _report_parser() -> argparse.ArgumentParser:
  p = OneLineParser(prog=f"{PROG} report")
  p.add_argument("--root", required=True)
  p.add_argument(
    "--metric",
    default="final_eval_loss",
    help="sort key: final_eval_loss, best_eval_loss, final_loss, wall_s, or any metrics.jsonl key",
  )
  p.add_argument("--mode", choices=("min", "max"), default=None, help="best is min or max (default: by the metric)")
  return p


def _trial_parser() -> argparse.ArgumentParser:
  p = OneLineParser(prog=f"{PROG} trial", description="run one trial of a planned sweep (a SLURM task)")
  p.add_argument("--root", required=True)
  p.add_argument("--index", type=int, required=True)
  p.add_argument("--launcher", choices=("local", "slurm"), default="local")
  return p


def sweep(argv: list[str]) -> int:
  args = _sweep_parser().parse_args(argv)
  if args.parallel is not None and args.parallel < 1:
    raise UserError(f"--parallel={args.parallel} must be at least 1")
  root = Path(args.root)
  if root.exists() and not root.is_dir():
    raise UserError(f"--root {root} is a file")
  plan = spec_lib.make_plan(args.config, args.grid, args.space, args.random, args.seed, args.set)
  spec_lib.save_plan(root, plan, ["python", "-m", "phi1_jax.sweep", *argv])
  if args.executor == "slurm":
    from phi1_jax.sweep import slurm

    return slurm.submit(root, plan, args.parallel or 0, args.sbatch_args)
  from phi1_jax.sweep import local

  return local.run(root, plan, args.parallel or 1)


def report(argv: list[str]) -> int:
  args = _report_parser().parse_args(argv)
  root = Path(args.root)
  from phi1_jax.sweep import report as report_lib

  report_lib.report(root, spec_lib.read_plan(root), args.metric, args.mode or report_lib.default_mode(args.metric))
  return 0


def trial(argv: list[str]) -> int:
  """One trial in the foreground, its output on stdout too: what each SLURM array task runs."""
  from phi1_jax.sweep import local, slurm
  from phi1_jax.sweep import trials as trial_lib

  args = _trial_parser().parse_args(argv)
  root = Path(args.root)
  plan = spec_lib.read_plan(root)
  if not 0 <= args.index < len(plan["trials"]):
    raise UserError(f"--index={args.index}: the sweep has trials 0..{len(plan['trials']) - 1}")
  t = plan["trials"][args.index]
  lock = trial_lib.Lock(root, t)
  if not lock.acquire():
    print(f"wait {t['name']}: another process is running it", flush=True)
    lock.acquire(block=True)
  if trial_lib.is_finished(root, t):
    lock.close()
    print(f"skip {t['name']}: finished", flush=True)
    return 0
  command, env = local.TRAINER, None
  if args.launcher == "slurm":  # launch/slurm.sbatch runs srun $PYTHON -m phi1_jax.train
    command, env = slurm.trainer_command(), {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
  attempt = trial_lib.Attempt(root, t, lock, command + spec_lib.trainer_args(plan, t, root), env)
  print(f"run {t['name']} (attempt {attempt.number}, log {attempt.log_path})", flush=True)
  for sig in (signal.SIGTERM, signal.SIGINT):  # a cancelled task: the trainer saves and exits
    signal.signal(sig, lambda signum, frame: attempt.proc.send_signal(signal.SIGTERM))
  while True:
    rc = attempt.poll()
    for line in attempt.new_lines():
      print(line, flush=True)
    if rc is not None:
      break
    time.sleep(0.5)
  attempt.close()
  print(f"{t['name']}: {trial_lib.status(root, t)} (exit code {rc})", flush=True)
  return rc


def main(argv: list[str]) -> int:
  if hasattr(sys.stdout, "reconfigure"):  # progress lines show up at once in a pipe or a log file
    sys.stdout.reconfigure(line_buffering=True)
  subcommands = {"report": report, "trial": trial}
  name = argv[0] if argv and argv[0] in subcommands else None
  try:
    return subcommands[name](argv[1:]) if name else sweep(argv)
  except UserError as e:
    return report_error(f"{PROG} {name}" if name else PROG, e)
  except BrokenPipeError:  # `... report | head`: the reader left; stay quiet
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
