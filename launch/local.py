#!/usr/bin/env python3
r"""Run a multi-process JAX job on this machine: N processes, K CPU devices each.

    python launch/local.py --processes=2 --devices=2 -- \
        python -m phi1_jax.train --config=configs/tiny.py --workdir=runs/mp

Process i gets `XLA_FLAGS=--xla_force_host_platform_device_count=K` and the trainer flags
`--config.distributed.coordinator_address=localhost:PORT --config.distributed.num_processes=N
--config.distributed.process_id=i` appended to the command, so `jax.distributed.initialize` joins
them (CPU collectives between processes go over gloo, jax's default on CPU). Output lines are
prefixed `[pI]`. When one process fails the others are stopped at once (SIGTERM, then SIGKILL after
`--grace` seconds: they would wait in a collective for the dead peer) and this script exits with the
first failure's code (128 + N for a process killed by signal N). Ctrl-C stops them all.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def forward(stream, prefix: str, lock: threading.Lock) -> None:
  for line in iter(stream.readline, ""):
    with lock:
      sys.stdout.write(f"{prefix} {line}" if line.endswith("\n") else f"{prefix} {line}\n")
      sys.stdout.flush()


def launch(command: list[str], processes: int, devices: int, port: int, grace: float = 3.0) -> int:
  """Starts the processes, forwards their output, returns 0 or the first failure's exit code.

  When one fails, the rest get SIGTERM and, `grace` seconds later, SIGKILL: a process waiting in
  a collective for a dead peer would otherwise hang until gloo times out.
  """
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(processes):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    argv = command + [
      f"--config.distributed.coordinator_address=localhost:{port}",
      f"--config.distributed.num_processes={processes}",
      f"--config.distributed.process_id={i}",
    ]
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    t = threading.Thread(target=forward, args=(p.stdout, f"[p{i}]", lock), daemon=True)
    t.start()
    procs.append(p)
    threads.append(t)
  failure = 0
  try:
    while True:
      codes = [p.poll() for p in procs]  # every one polled: any() would stop at the first running
      failure = next((c for c in codes if c not in (None, 0)), 0)
      if failure or all(c is not None for c in codes):
        break
      time.sleep(0.05)
  except KeyboardInterrupt:  # Ctrl-C: stop them all, as for a failure
    failure = -signal.SIGINT
  finally:
    stop(procs, grace)
    for t in threads:
      t.join(timeout=5)
  return 128 - failure if failure < 0 else failure  # killed by signal N: exit 128 + N, as a shell does


def stop(procs: list[subprocess.Popen], grace: float) -> None:
  """SIGTERM to the processes still running, SIGKILL to those still running `grace` seconds later."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + grace
  for p in procs:
    try:
      p.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices", type=int, default=1, help="CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument(
    "--grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL for the others when one process fails"
  )
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  if args.processes < 1 or args.devices < 1:
    parser.error("--processes and --devices must be positive")
  return launch(command, args.processes, args.devices, args.port or free_port(), args.grace)


if __name__ == "__main__":
  sys.exit(main())
