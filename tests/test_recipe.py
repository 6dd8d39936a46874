"""`python -m phi1_jax.recipe` end to end on a small real recipe (tests/data/recipe_small.py): real stages
in real child processes, a SIGKILL in the middle of training, reuse by content hash, a failing step."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, repo_env

RECIPE = "tests/data/recipe_small.py"
pytestmark = pytest.mark.slow


def recipe(*args, check=True, timeout=600):
  proc = subprocess.run(
    [sys.executable, "-m", "phi1_jax.recipe", *args],
    cwd=REPO,
    env=repo_env(),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def provenance(root: Path) -> dict[str, dict | None]:
  """Each step's provenance record (None: not started)."""
  from phi1_jax.recipe.graph import read_provenance

  index = json.loads((root / "recipes" / "small.json").read_text())
  return {name: read_provenance(root / e["folder"]) for name, e in index["steps"].items()}


def report_numbers(root: Path) -> dict:
  """The report's results without what differs between two runs of the same thing (times, paths)."""
  from phi1_jax.recipe import results

  gathered = results.gather(root, "small")
  steps = [
    {**s, "counts": {k: v for k, v in s["counts"].items() if not any(t in k for t in ("wall", "time", "_s"))}}
    for s in gathered["steps"]
  ]
  for s in steps:
    s.pop("wall_s"), s.pop("attempts")
  return {"variants": gathered["variants"], "steps": steps}


def start_until_training_step(root: Path, step: int) -> tuple[subprocess.Popen, Path]:
  """The small recipe started in the background, once its training step has logged `step`; (its process,
  the train step's log)."""
  proc = subprocess.Popen(
    [sys.executable, "-m", "phi1_jax.recipe", "run", RECIPE, f"--root={root}", "--quiet"],
    cwd=REPO,
    env=repo_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and proc.poll() is None:
    logs = list((root / "train").glob("*/log.txt"))
    if logs and f"step {step}/30" in logs[0].read_text():
      return proc, logs[0]
    time.sleep(0.2)
  proc.kill()
  raise AssertionError(f"training never reached step {step}")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("straight")
  recipe("run", RECIPE, f"--root={root}", "--quiet")
  return root


def test_a_recipe_killed_mid_training_resumes_and_equals_an_uninterrupted_run(straight_run, tmp_path):
  root = tmp_path / "killed"
  proc, train_log = start_until_training_step(root, 12)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  time.sleep(1)  # the kernel delivers the trainer's parent-death signal
  workdir = str(train_log.parent / "out")
  left = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout.split()
  assert not left, f"a stage outlived the recipe: {left}"
  assert provenance(root)["pretrain/raw/seed0"]["completed"] is False

  dry = recipe("run", RECIPE, f"--root={root}", "--dry_run").stdout
  assert "pretrain/raw/seed0" in dry and "resumes an interrupted run" in dry
  assert sum(line.endswith("  cached") for line in dry.splitlines()) == 3, dry
  assert "eval/raw/seed0/base" in dry and "not run yet" in dry
  recipe("run", RECIPE, f"--root={root}", "--quiet")

  records = provenance(root)
  for name, record in records.items():
    finished = [a for a in record["attempts"] if a.get("exit_code") == 0]
    assert record["completed"] and len(finished) == 1, (name, record["attempts"])
  train_attempts = records["pretrain/raw/seed0"]["attempts"]
  assert len(train_attempts) == 2 and "exit_code" not in train_attempts[0]
  second_attempt = train_log.read_text().split("\n### ")[-1]
  resumed_at = re.search(r"steps (\d+) -> 30", second_attempt)
  assert "resumed from" in second_attempt and resumed_at and int(resumed_at.group(1)) > 0, second_attempt[:2000]
  assert all(len(r["attempts"]) == 1 for n, r in records.items() if n != "pretrain/raw/seed0")
  assert report_numbers(root) == report_numbers(straight_run)

  recipe("report", f"--root={root}")
  text = (root / "report.md").read_text()
  assert "Wiring test" in text and "raw" in text
  assert (root / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  again = recipe("run", RECIPE, f"--root={root}")
  assert "nothing to do" in again.stdout


def test_sigterm_stops_the_running_stage_in_one_line_and_the_rerun_resumes_it(tmp_path):
  root = tmp_path / "stopped"
  proc, train_log = start_until_training_step(root, 8)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=180)
  assert proc.returncode == 130, stderr
  assert stderr.strip().splitlines()[-1].startswith("stopped by SIGTERM: finished steps are kept"), stderr
  workdir = str(train_log.parent / "out")
  assert not subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True).stdout.split()
  assert (train_log.parent / "out" / "checkpoints").is_dir()  # the trainer saved where it stopped
  recipe("run", RECIPE, f"--root={root}", "--quiet")
  second = train_log.read_text().split("\n### ")[-1]
  assert "resumed from" in second


def test_a_changed_setting_reruns_that_step_and_what_reads_from_it_only(straight_run):
  dry = recipe("run", RECIPE, f"--root={straight_run}", "--dry_run", "--set", "train_steps=20").stdout
  lines = {line.split()[0]: line for line in dry.splitlines() if line.startswith("  ") and len(line.split()) > 2}
  for name in ("tokenizer", "decontam/raw", "pack/raw"):
    assert lines[name].endswith("cached"), dry
  assert "new settings: config.total_steps 30 -> 20" in lines["pretrain/raw/seed0"], dry
  assert "its input changed: pretrain/raw/seed0" in lines["eval/raw/seed0/base"], dry

  before = provenance(straight_run)
  recipe("run", RECIPE, f"--root={straight_run}", "--quiet", "--set", "train_steps=20")
  after = provenance(straight_run)
  for name in ("tokenizer", "decontam/raw", "pack/raw"):
    assert after[name] == before[name]  # not run again: the same folder, one attempt
  assert after["pretrain/raw/seed0"]["hash"] != before["pretrain/raw/seed0"]["hash"]
  assert after["pretrain/raw/seed0"]["counts"]["final_step"] == 20
  # the first run's folders are still there: going back to 30 steps is all cached
  back = recipe("run", RECIPE, f"--root={straight_run}", "--dry_run").stdout
  assert "0 to run" in back, back


def test_a_failed_step_stops_what_reads_from_it_in_one_line_naming_its_log(straight_run):
  proc = recipe("run", RECIPE, f"--root={straight_run}", "--quiet", "--set", "eval_benchmark=mbpp", check=False)
  assert proc.returncode == 1
  failed = [line for line in proc.stdout.splitlines() if "error: step eval/raw/seed0/base failed" in line]
  assert failed and "its log: " in failed[0]
  log = Path(failed[0].split("its log: ")[1])
  assert log.is_file() and "mbpp" in log.read_text()


@pytest.mark.parametrize(
  "args, message",
  [
    (["run", "tests/data/nope.py", "--root=/tmp/x"], "recipe file tests/data/nope.py does not exist"),
    (["run", RECIPE, "--root=/tmp/x", "--set", "train_step=3"], "unknown config key 'train_step'"),
    (["run", RECIPE, "--root=/tmp/x", "--set", "train_steps=many"], "train_steps"),
    (["report", "--root=/tmp/phi1-no-such-root"], "holds no recipe run"),
  ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
  proc = recipe(*args, check=False, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_dry_run_of_the_paper_recipe_prints_its_cost_without_inputs_or_endpoint():
  proc = recipe("run", "configs/recipes/phi1.py", "--root=/tmp/phi1-dry", "--dry_run")
  out = proc.stdout
  assert "cost" in out and "GPU-hours" in out
  assert "llm.base_url" in out  # what must be set before it can run
