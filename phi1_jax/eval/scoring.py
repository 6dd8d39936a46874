"""Scoring of benchmark samples: each sample's program run in the sandbox, then pass@k.

`evaluate_samples` checks the samples ({task_id, completion}) against the problems, builds each
program (phi1_jax.eval.problems.build_program), runs them all (phi1_jax.eval.runner) and sums
the results up: pass@k by the Codex paper's unbiased estimator, counts and timings.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from phi1_jax.eval import plus
from phi1_jax.eval import problems as problems_lib
from phi1_jax.eval import runner
from phi1_jax.eval import sandbox as sandbox_lib


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k, 1 - C(n-c, k) / C(n, k), in the Codex paper's stable product form."""
  if not 0 <= c <= n or k < 1:
    raise ValueError(f"need 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_by_task(n_by_task: dict, c_by_task: dict, ks, prefix: str) -> dict[str, float]:
  """{prefix + k: mean pass@k} for each k that every task's sample count allows."""
  ns = list(n_by_task.values())
  return {
    f"{prefix}{k}": float(np.mean([pass_at_k(n_by_task[t], c_by_task[t], k) for t in n_by_task]))
    for k in sorted(set(ks))
    if ns and min(ns) >= k
  }


def _canonical_task_id(benchmark: str, task_id) -> str:
  # MBPP samples may name a task by its number; HumanEval ids are strings as given.
  if benchmark == "mbpp" and (isinstance(task_id, int) or str(task_id).isdigit()):
    return problems_lib.mbpp_task_id(int(task_id))
  return task_id if isinstance(task_id, str) else repr(task_id)


def check_samples(benchmark: str, samples: list[dict], problems: dict) -> list[str]:
  """Canonical task_id of each sample; ValueError on the first malformed or unknown row."""
  task_ids = []
  for index, sample in enumerate(samples):
    if not isinstance(sample, dict) or "task_id" not in sample or "completion" not in sample:
      raise ValueError(f"sample {index}: needs keys task_id and completion, got {sample!r:.200}")
    if not isinstance(sample["completion"], str):
      raise ValueError(f"sample {index}: completion is not a string")
    task_id = _canonical_task_id(benchmark, sample["task_id"])
    if task_id not in problems:
      raise ValueError(f"sample {index}: unknown {benchmark} task_id {sample['task_id']!r}")
    task_ids.append(task_id)
  return task_ids


def evaluate_samples(
  benchmark: str,
  samples: list[dict],
  problems: dict,
  *,
  ks=(1, 10, 100),
  timeout_s: float = 3.0,
  memory_mb: int = 1024,
  workers: int | None = None,
  progress: bool = False,
  sandbox: str = "bwrap",
) -> tuple[list[dict], dict]:
  """Execute samples ({task_id, completion}) against `problems` (task_id -> Problem).

  Returns the rows (each sample plus `result` and `passed`, in the samples' order) and a
  summary: pass@k for each k that every attempted problem's sample count allows, counts, time.
  """
  if isinstance(problems, (list, tuple)):
    problems = {problem.task_id: problem for problem in problems}
  task_ids = check_samples(benchmark, samples, problems)
  completions = [sample["completion"] for sample in samples]
  is_plus = benchmark in plus.BENCHMARKS
  if is_plus:  # evalplus reports on the sanitized solution; the raw one (prompt + completion) runs too
    raw = [problems[t].prompt + s["completion"] for t, s in zip(task_ids, samples)]
    completions = plus.solutions(samples, problems, task_ids) + raw
  programs = [problems_lib.build_program(problems[t], c) for t, c in zip(task_ids * (1 + is_plus), completions)]
  start = time.perf_counter()
  results = runner.execute_programs(
    programs, timeout_s=timeout_s, memory_mb=memory_mb, workers=workers, progress=progress, sandbox=sandbox
  )
  seconds = time.perf_counter() - start
  results, raw_results = results[: len(samples)], results[len(samples) :]
  rows = [dict(sample, result=r.result, passed=r.passed) for sample, r in zip(samples, results)]
  if is_plus:
    rows = [dict(row, solution=c, raw_passed=r.passed) for row, c, r in zip(rows, completions, raw_results)]

  n_by_task, c_by_task = collections.Counter(), collections.Counter()
  for task_id, result in zip(task_ids, results):
    n_by_task[task_id] += 1
    c_by_task[task_id] += result.passed
  pass_at = pass_at_by_task(n_by_task, c_by_task, ks, "pass@")
  if is_plus:  # evalplus's "base tests" line beside its "base + extra tests" one; the unsanitized score
    base_by_task = collections.Counter(t for t, r in zip(task_ids, results) if plus.passed_base(r.result))
    pass_at.update(pass_at_by_task(n_by_task, base_by_task, ks, "base_pass@"))
    raw_by_task = collections.Counter(t for t, r in zip(task_ids, raw_results) if r.passed)
    pass_at.update(pass_at_by_task(n_by_task, raw_by_task, ks, "raw_pass@"))
  ns = list(n_by_task.values())
  # "failed: AssertionError: message" counts as "failed: AssertionError".
  reasons = collections.Counter(": ".join(r.result.split(": ")[:2]) for r in results)
  summary = {
    "benchmark": benchmark,
    **pass_at,
    "n_samples_total": len(samples),  # all samples; the eval CLI adds n_samples_per_problem
    "n_passed": int(sum(r.passed for r in results)),
    "n_problems_attempted": len(n_by_task),
    "n_problems": len(problems),
    "samples_per_problem": {"min": min(ns, default=0), "max": max(ns, default=0)},
    "results": dict(reasons),
    "seconds": round(seconds, 3),
    "samples_per_second": round(len(samples) / seconds, 2) if seconds > 0 else None,
    "timeout_s": timeout_s,
    "memory_mb": memory_mb,
    "workers": sandbox_lib.default_workers(sandbox) if workers is None else workers,
    "sandbox": sandbox_lib.check(sandbox, quiet=True),  # {"sandbox": "bwrap", "version": ...}
  }
  if is_plus:  # evalplus.sanitize's "Sanitized N out of M files"
    given = [problems[t].prompt + "\n" + s["completion"] for t, s in zip(task_ids, samples)]
    summary["n_changed_by_sanitizer"] = sum(g != c for g, c in zip(given, completions))
  return rows, summary
