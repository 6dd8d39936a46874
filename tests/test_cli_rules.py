"""The rules every command shares (phi1_jax.cli), in real processes: SIGINT or SIGTERM ends a
command in one line, exit 130, killing what it started; a rerun with the same settings is done."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import alive
from phi1_jax import cli

# A command that starts a grandchild (as a worker pool or a sandbox would) and works forever.
PROGRAM = textwrap.dedent("""
    import subprocess, sys, time
    from phi1_jax import cli
    def main():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(child.pid, flush=True)
        while True:
            time.sleep(0.05)
    sys.exit(cli.run_command(main, kept="the rows written so far are kept"))
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_ends_command_in_one_line_and_kills_its_children(sig):
  proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  child = int(proc.stdout.readline())
  assert alive(child)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == 130
  assert err.strip().splitlines() == [
    f"stopped by {sig.name}: the rows written so far are kept; rerun the same command to resume"
  ]
  deadline = time.time() + 5
  while alive(child) and time.time() < deadline:
    time.sleep(0.05)
  assert not alive(child), "the command's child outlived it"


def test_descendants_finds_grandchildren():
  proc = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import subprocess,sys,time; subprocess.Popen(['sleep','60']); print('up', flush=True); time.sleep(60)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert proc.stdout.readline().strip() == "up"
    found = cli.descendants()
    assert proc.pid in found
    grandchildren = cli.descendants(proc.pid)
    assert len(grandchildren) == 1 and grandchildren[0] in found
  finally:
    for pid in cli.descendants(proc.pid) + [proc.pid]:
      os.kill(pid, signal.SIGKILL)
    proc.wait()


def test_rerun_rule(tmp_path):
  out = tmp_path / "out"
  settings = {"model": "a", "n": 3}
  assert not cli.already_done(out, settings, "result.jsonl")  # fresh: settings recorded
  assert not cli.already_done(out, settings, "result.jsonl")  # cut short before the product: go on
  (out / "result.jsonl").write_text("{}\n")
  assert cli.already_done(out, settings, "result.jsonl")
  with pytest.raises(ValueError, match=r"other settings \(n 3 -> 4\)"):
    cli.already_done(out, {"model": "a", "n": 4}, "result.jsonl")
  assert (out / "result.jsonl").read_text() == "{}\n"
  (out / "settings.json").unlink()
  with pytest.raises(ValueError, match="no settings.json"):
    cli.already_done(out, settings, "result.jsonl")
