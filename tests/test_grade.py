"""`python -m phi1_jax.eval --reference` and LLM grading (phi1_jax/eval/grade.py) end to end.

The grader is a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/llm_servers.py) whose
answers are scripted per problem, so the summary's mean and counts are known exactly; the same
server misbehaves (429, 5xx, dropped and reset connections, garbage 200s) and the evaluation is
SIGKILLed mid-grading, then rerun: the server's own count shows each grade paid for once.
--reference needs no model, so these runs only execute the canonical solutions.
"""

from __future__ import annotations

import json
import os
import urllib.request
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, repo_env, run_module, serve_process
from llm_servers import FaultyLLMServer, canonical, prompt_text
from phi1_jax.eval import grade
from phi1_jax.eval import __main__ as eval_cli
from phi1_jax.eval.problems import Problem, load_humaneval

MBPP_PATH = REPO.parent / "shared/data/mbpp/mbpp.jsonl"  # as tests/test_problems.py finds it
needs_mbpp = pytest.mark.skipif(not MBPP_PATH.is_file(), reason=f"MBPP file absent: {MBPP_PATH}")
HUMANEVAL = load_humaneval()
# The grader's answer for each of the first 8 problems: 4 with a valid last line, 4 without one.
SCRIPT = {
  "HumanEval/0": "Correct and clear.\nGrade: 7",
  "HumanEval/1": "Out of range.\nGrade: 11",
  "HumanEval/2": "Grade: 8\nThanks for asking!",  # the grade is not the last line
  "HumanEval/3": "**Grade: 9**",
  "HumanEval/4": "I cannot grade this.",
  "HumanEval/5": "Fine.\n\nGrade: 3  \n\n",  # trailing blank lines and spaces are not lines
  "HumanEval/6": "Excellent.\nGrade: 10",
  "HumanEval/7": "Grade: 0",
}
GRADES = {"HumanEval/0": 7, "HumanEval/5": 3, "HumanEval/6": 10, "HumanEval/7": 0}


def task_of(body: dict) -> str:
  """The HumanEval task whose prompt a grading request shows."""
  text = prompt_text("chat", body)
  found = [t for t, p in HUMANEVAL.items() if f"def {p.entry_point}(" in text and p.prompt in text]
  assert len(found) == 1, found
  return found[0]


def scripted(endpoint: str, body: dict) -> str:
  return SCRIPT.get(task_of(body), "Reasons.\nGrade: 5")


def _eval(*args: str, timeout: float = 300):
  return run_module("phi1_jax.eval", *args, timeout=timeout)


def _graded_args(out: Path, base_url: str, *extra: str) -> list[str]:
  return [
    "--benchmark=humaneval",
    "--reference",
    f"--out={out}",
    "--workers=2",
    f"--grader_base_url={base_url}",
    "--grader_model=judge",
    *extra,
  ]


def _jsonl(path: Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_parse_grade_takes_only_an_exact_last_line():
  assert grade.parse_grade("Because.\nGrade: 7") == 7
  assert grade.parse_grade("Grade: 10\n\n  \n") == 10 and grade.parse_grade("  Grade: 0  ") == 0
  for text in ("Grade: 11", "Grade: -1", "Grade: 7.5", "grade: 7", "Grade:7", "**Grade: 7**", "Grade: 7/10", ""):
    assert grade.parse_grade(text) is None, text
  assert grade.parse_grade("Grade: 4\nOn reflection, lower.") is None


def test_grader_prompt_shows_problem_reference_completion_and_outcome():
  problem = Problem("T/1", 'def f(x):\n  """Doubles x."""\n', "assert f(2) == 4", "f", "  return 2 * x\n")
  template = (grade.default_prompt_path()).read_text()
  text = grade.grader_prompt(template, problem, "  return x + {outcome}\n", "failed: AssertionError")
  assert "{problem}" not in text and "{reference}" not in text and "{completion}" not in text
  assert problem.prompt + "  return 2 * x" in text  # the reference continues the prompt, as the completion does
  assert problem.prompt + "  return x + {outcome}" in text  # a placeholder inside a completion stays as written
  assert "tests on the student's solution: failed: AssertionError" in text
  assert text.rstrip().endswith("Grade: N")
  shots = "Task: add.\n[BEGIN]\ndef add(a, b): return a + b\n[DONE]\n"
  austin = Problem("T/2", shots + "Task: double.\n[BEGIN]\n", "assert f(2) == 4", None, "def f(x): return 2*x", False)
  text = grade.grader_prompt(template, austin, "def f(x): return x", "passed")
  assert "Task: double.\n[BEGIN]\n" in text and "Task: add" not in text  # the task, not the shots
  assert "def f(x): return 2*x" in text and "def f(x): return x\n" in text  # code that stands alone


@pytest.mark.slow
def test_humaneval_reference_passes_every_problem(tmp_path):
  out = tmp_path / "ref"
  proc = _eval("--benchmark=humaneval", "--reference", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["pass@1"] == 1.0 and summary["n_passed"] == summary["n_problems"] == 164
  assert summary["reference"] is True and "checkpoint" not in summary
  samples = _jsonl(out / "samples.jsonl")
  assert samples[0] == {"task_id": "HumanEval/0", "completion": HUMANEVAL["HumanEval/0"].canonical_solution}
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"pass@1": 1.0}


@needs_mbpp
@pytest.mark.parametrize("prompt_format", ["docstring", "austin3shot"])
def test_mbpp_reference_passes(tmp_path, prompt_format):
  out = tmp_path / prompt_format
  proc = _eval(
    "--benchmark=mbpp",
    f"--mbpp_path={MBPP_PATH}",
    f"--mbpp_prompt={prompt_format}",
    "--reference",
    "--limit=40",
    f"--out={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((out / "summary.json").read_text())
  assert summary["pass@1"] == 1.0 and summary["n_passed"] == 40 and summary["mbpp_prompt"] == prompt_format


@pytest.mark.slow
@needs_mbpp
def test_mbpp_reference_passes_the_whole_test_split(tmp_path):
  out = tmp_path / "mbpp"
  # MBPP/123's reference takes over 3 s (tests/test_problems.py): a longer timeout
  proc = _eval("--benchmark=mbpp", f"--mbpp_path={MBPP_PATH}", "--reference", "--timeout=30", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((out / "summary.json").read_text())["n_passed"] == 500


@pytest.mark.parametrize(
  "flags, message",
  [
    ([], "--checkpoint=CKPT is required (or --reference"),
    (["--reference", "--checkpoint=x"], "drop --checkpoint"),
    (["--reference", "--n_samples=2", "--temperature=1"], "--n_samples"),
    (["--reference", "--grader_model=m"], "need --grader_base_url"),
    (["--reference", "--grader_base_url=http://127.0.0.1:9/v1"], "--grader_model"),
    (["--reference", "--grader_base_url=ftp://x", "--grader_model=m"], "--grader_base_url 'ftp://x'"),
    (
      ["--reference", "--grader_base_url=http://127.0.0.1:9/v1", "--grader_model=m", "--grader_concurrency=0"],
      "--grader_concurrency",
    ),
    (
      ["--reference", "--grader_base_url=http://127.0.0.1:9/v1", "--grader_model=m", "--grader_prompt=/no/such"],
      "/no/such",
    ),
  ],
)
def test_bad_reference_and_grader_flags_fail_in_one_line(tmp_path, capsys, flags, message):
  assert eval_cli.main(["--benchmark=humaneval", f"--out={tmp_path / 'o'}", *flags]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "error: " in err[0] and message in err[0], err
  assert not (tmp_path / "o").exists()


def test_a_template_without_the_completion_is_refused(tmp_path, capsys):
  template = tmp_path / "rubric.txt"
  template.write_text("Grade this: {problem}\nGrade: N\n")
  flags = ["--grader_base_url=http://127.0.0.1:9/v1", "--grader_model=m", f"--grader_prompt={template}"]
  assert eval_cli.main(["--benchmark=humaneval", "--reference", f"--out={tmp_path / 'o'}", *flags]) == 2
  assert "no {completion} placeholder" in capsys.readouterr().err


def test_scripted_grader_gives_the_exact_summary(tmp_path):
  with FaultyLLMServer(responder=scripted) as server:
    out = tmp_path / "graded"
    proc = _eval(*_graded_args(out, server.base_url, "--limit=8"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pass@1"] == 1.0 and summary["grade_mean"] == 5.0  # (7 + 3 + 10 + 0) / 4
    assert (summary["graded"], summary["ungraded"], summary["grade_missing"]) == (4, 4, 0)
    assert summary["grader"]["settings"]["model"] == "judge" and summary["grader"]["llm_this_run"]["answers_paid"] == 8
    headline = {"pass@1": 1.0, "grade_mean": 5.0, "graded": 4, "ungraded": 4, "grade_missing": 0}
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == headline
    samples = _jsonl(out / "samples.jsonl")
    assert [s["task_id"] for s in samples] == list(SCRIPT)
    for s in samples:
      assert s["grade"] == GRADES.get(s["task_id"]) and set(s) == {"task_id", "completion", "grade", "grade_rationale"}
    by_task = {s["task_id"]: s for s in samples}
    assert by_task["HumanEval/0"]["grade_rationale"] == "Correct and clear."  # the grade line is not in it
    assert by_task["HumanEval/7"]["grade_rationale"] == ""
    assert by_task["HumanEval/2"]["grade_rationale"] == SCRIPT["HumanEval/2"]  # ungraded: the whole answer
    assert [r["grade"] for r in _jsonl(out / "samples.jsonl_results.jsonl")] == [s["grade"] for s in samples]
    request = server.log[0]["body"]  # the rubric with the problem, the reference and the outcome
    assert request["model"] == "judge" and request["temperature"] == 0.0 and request["max_tokens"] == 512
    text = prompt_text("chat", request)
    problem = HUMANEVAL[task_of(request)]
    assert (problem.prompt + problem.canonical_solution) in text and "solution: passed" in text

    again = _eval(*_graded_args(out, server.base_url, "--limit=8"))  # the same grader: nothing to do
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1]) == headline and len(server.log) == 8
    other = _eval(*_graded_args(out, server.base_url, "--limit=8", "--grader_temperature=0.5"))
    assert other.returncode == 2 and "another grader" in other.stderr and "temperature 0.0 -> 0.5" in other.stderr
    assert len(server.log) == 8


def test_a_finished_evaluation_is_graded_when_a_grader_is_added(tmp_path):
  out = tmp_path / "ref"
  proc = _eval("--benchmark=humaneval", "--reference", "--limit=3", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  settings = (out / "settings.json").read_text()
  with FaultyLLMServer(responder=scripted) as server:
    proc = _eval(*_graded_args(out, server.base_url, "--limit=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "executing" not in proc.stderr  # the samples and their results are kept, not run again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graded"] == 1 and summary["grade_mean"] == 7.0 and summary["ungraded"] == 2
    assert (out / "settings.json").read_text() == settings and len(server.paid_keys()) == 3


def test_missing_grades_exit_1_and_a_rerun_asks_only_for_them(tmp_path):
  fail_task = {"HumanEval/1"}
  with FaultyLLMServer(responder=scripted, fault_for=lambda e, b: "400" if task_of(b) in fail_task else None) as server:
    out = tmp_path / "graded"
    proc = _eval(*_graded_args(out, server.base_url, "--limit=3"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "1 of 3 samples not graded (1 x HTTP 400" in proc.stderr.strip().splitlines()[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["graded"], summary["ungraded"], summary["grade_missing"]) == (1, 1, 1)
    fail_task.clear()
    proc = _eval(*_graded_args(out, server.base_url, "--limit=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["graded"], summary["ungraded"], summary["grade_missing"]) == (1, 2, 0)
    assert summary["grader"]["llm_this_run"]["answers_cached"] == 2
    assert set(server.paid_keys().values()) == {1} and len(server.paid_keys()) == 3


class KillAfterPaid:
  """fault_for that SIGKILLs the evaluation when a request arrives after `n` answers were paid, and
  answers that request with a 500: at --grader_concurrency=1 no other request is on its way then,
  so every answer paid before the kill was received and cached."""

  def __init__(self, n: int):
    self.n, self.victim, self.pid, self.server = n, None, None, None

  def __call__(self, endpoint: str, body: dict) -> str | None:
    key = canonical(body)
    if self.victim is None and len(self.server.paid_keys()) >= self.n:
      self.victim = key
      os.kill(self.pid, signal.SIGKILL)
    return "500" if key == self.victim else None


def test_misbehaving_grader_and_sigkill_lose_and_repeat_no_grade(tmp_path):
  out = tmp_path / "graded"
  killer = KillAfterPaid(3)
  with FaultyLLMServer(responder=scripted, retry_after="0", fault_for=killer) as server:
    killer.server = server
    # 429 and 503 with Retry-After, 500, dropped and reset connections, 200s with HTML or no choices
    server.add_faults("429", "500", "503", "drop", "reset", "garbage", "no_choices")
    flags = ("--limit=10", "--grader_concurrency=1", "--grader_max_attempts=30", "--grader_backoff_s=0.05")
    env = repo_env()
    log = tmp_path / "killed.log"
    with open(log, "w") as log_file:
      proc = subprocess.Popen(
        [sys.executable, "-m", "phi1_jax.eval", *_graded_args(out, server.base_url, *flags)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
      )
    killer.pid = proc.pid
    try:
      assert proc.wait(timeout=240) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
      proc.kill()
    paid_before = len(server.paid_keys())
    assert not (out / "summary.json").exists() and 3 <= paid_before < 10
    assert sum(v for k, v in server.outcomes().items() if k != "ok") >= 7

    server.fault_for = None
    server.fault_rate = 0.3  # the rerun meets faults at random, several requests at once
    flags = ("--limit=10", "--grader_concurrency=4", "--grader_max_attempts=30", "--grader_backoff_s=0.05")
    proc = _eval(*_graded_args(out, server.base_url, *flags))
    assert proc.returncode == 0, proc.stderr[-3000:]
    paid = server.paid_keys()
    assert len(paid) == 10 and set(paid.values()) == {1}  # every grade paid exactly once over both runs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graded"] + summary["ungraded"] == 10 and summary["grade_missing"] == 0
    assert summary["grader"]["llm_this_run"]["answers_cached"] == paid_before
    assert summary["grader"]["llm_this_run"]["answers_paid"] == 10 - paid_before
    samples = _jsonl(out / "samples.jsonl")
    assert [s["grade"] for s in samples] == [
      GRADES.get(s["task_id"], None if s["task_id"] in SCRIPT else 5) for s in samples
    ]


@pytest.mark.slow
def test_grading_against_serve_is_plumbing(tiny_checkpoint, tmp_path):
  """The project's own server as the grader: a random tiny model writes no grade line, so this checks
  that every sample is asked once and counted, that a rubric longer than its context is a
  one-line failure, and that a rerun asks nothing."""
  short = tmp_path / "short.txt"
  short.write_text("{completion}\nTests: {outcome}\nGrade:")
  with serve_process(tiny_checkpoint, tmp_path / "server.log", "--max_batch=4") as (url, _):
    flags = ("--limit=2", f"--grader_model={tiny_checkpoint.name}", "--grader_max_new_tokens=16")
    out = tmp_path / "short"
    proc = _eval(*_graded_args(out, f"{url}/v1", *flags, f"--grader_prompt={short}"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graded"] + summary["ungraded"] == 2 and summary["grade_missing"] == 0
    assert summary["grader"]["llm_this_run"]["answers_paid"] == 2
    assert all(isinstance(s["grade_rationale"], str) for s in _jsonl(out / "samples.jsonl"))
    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
      generated = json.loads(resp.read())["tokens_generated"]
    again = _eval(*_graded_args(out, f"{url}/v1", *flags, f"--grader_prompt={short}"))
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr[-3000:]
    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
      assert json.loads(resp.read())["tokens_generated"] == generated

    out = tmp_path / "rubric"  # the default rubric is over the tiny model's 512 tokens: HTTP 400, not graded
    proc = _eval(*_graded_args(out, f"{url}/v1", *flags))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "2 of 2 samples not graded (2 x HTTP 400" in proc.stderr.strip().splitlines()[-1]
    assert json.loads((out / "summary.json").read_text())["grade_missing"] == 2
