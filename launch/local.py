#!/usr/bin/env python3
r"""Run a multi-process JAX job on this machine: N processes, K CPU devices each.

    python launch/local.py --processes=2 --devices=2 -- \
        python -m phi1_jax.train --config=configs/tiny.py --workdir=runs/mp

Process i gets `XLA_FLAGS=--xla_force_host_platform_device_count=K` and the trainer flags
`--config.distributed.coordinator_address=localhost:PORT --config.distributed.num_processes=N
--config.distributed.process_id=i` appended to the command, so `jax.distributed.initialize` joins
them (CPU collectives between processes go over gloo, jax's default on CPU). Output lines are
prefixed `[pI]`. When one process fails the others are stopped (they would wait forever in a
collective) and this script exits with the first failure's code.
"""

from __future__ import annotations

import argparse
import os
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


def launch(command: list[str], processes: int, devices: int, port: int) -> int:
  """Starts the processes, forwards their output, returns 0 or the first non-zero exit code."""
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(processes):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    argv = command + [f"--config.distributed.coordinator_address=localhost:{port}",
                      f"--config.distributed.num_processes={processes}", f"--config.distributed.process_id={i}"]
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    t = threading.Thread(target=forward, args=(p.stdout, f"[p{i}]", lock), daemon=True)
    t.start()
    procs.append(p)
    threads.append(t)
  failure = 0
  while any(p.poll() is None for p in procs):
    failed = [p for p in procs if p.returncode not in (None, 0)]
    if failed:
      failure = failed[0].returncode
      for p in procs:
        if p.poll() is None:
          p.terminate()
      break
    time.sleep(0.2)
  for p in procs:
    try:
      p.wait(timeout=30)
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
  for t in threads:
    t.join(timeout=5)
  return failure or next((p.returncode for p in procs if p.returncode), 0)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--processes", type=int, default=2)
  parser.add_argument("--devices", type=int, default=1, help="CPU devices per process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command each process runs")
  args = parser.parse_args()
  command = args.command[1:] if args.command[:1] == ["--"] else args.command
  if not command:
    parser.error("give the command after --")
  if args.processes < 1 or args.devices < 1:
    parser.error("--processes and --devices must be positive")
  return launch(command, args.processes, args.devices, args.port or free_port())


if __name__ == "__main__":
  sys.exit(main())
