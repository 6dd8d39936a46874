"""The stand-in servers a recipe starts for its steps (a rule-based annotator, scripted LLMs): each on
a free port of 127.0.0.1 on first use, its output in ROOT/services/<name>.log, stopped at the end."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

from phi1_jax.cli import UserError, die_with_parent
from phi1_jax.recipe.steps import Service


class Services:
  """Stand-in servers, started on first use on free ports of 127.0.0.1, stopped at the end."""

  def __init__(self, services: dict[str, Service], log_dir: Path):
    self.services = services
    self.log_dir = log_dir
    self.urls: dict[str, str] = {}
    self.procs: list[subprocess.Popen] = []

  def url(self, name: str) -> str:
    if name not in self.urls:
      self.urls[name] = self._start(self.services[name])
    return self.urls[name]

  def _start(self, service: Service) -> str:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    argv = [a.replace("{port}", str(port)).replace("{python}", sys.executable) for a in service.argv]
    self.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = self.log_dir / f"{service.name}.log"
    with open(log_path, "ab") as log:
      proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    self.procs.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      if proc.poll() is not None:
        raise UserError(f"service {service.name} exited with code {proc.returncode} at start; its log: {log_path}")
      with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return f"http://127.0.0.1:{port}/v1"
      time.sleep(0.2)
    raise UserError(f"service {service.name} did not listen on port {port} within 60 s; its log: {log_path}")

  def stop(self) -> None:
    for proc in self.procs:
      proc.terminate()
    for proc in self.procs:
      with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
      if proc.poll() is None:
        proc.kill()
