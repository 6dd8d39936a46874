"""HumanEval+ and MBPP+ (evalplus): its released files read by evalplus, its sanitizer, its scoring in the sandbox.

    python -m phi1_jax.eval --benchmark=humaneval_plus --data_path=HumanEvalPlus-v0.1.10.jsonl ...
    python -m phi1_jax.eval --benchmark=mbpp_plus --data_path=MbppPlus-v0.2.0.jsonl ...

The files are read by evalplus's own loaders (`get_human_eval_plus`, `get_mbpp_plus`: their local-path
override, the completeness check, MBPP+'s input deserialization), never downloaded. As evalplus reports,
each sample is sanitized first: solution = evalplus.sanitize.sanitize(prompt + "\\n" + completion,
entry_point), and the solution is what runs. Its program, run in this project's sandbox like any other
(phi1_jax.eval.runner), is the solution followed by the check `check_program` writes: evalplus's evaluator
(evalplus.evaluate, evalplus.eval.unsafe_execute) without its processes. It computes the expected outputs
with the canonical solution (prompt + canonical_solution, inputs deep-copied, as evalplus's trusted_exec),
then calls the solution on each base input, then each plus input, and compares as evalplus does: equality,
else numpy.allclose's rule (rtol=1e-7, atol) when atol is set (1e-6 for float outputs) with the same type and length,
and evalplus's special oracles (HumanEval/32 find_zero, MBPP+'s set-equal and not-None tasks, ...). An input
fails when the call raises or runs longer than max(1 s, 4 x the canonical solution's time on it), as
evalplus's per-input time limits (the program's own timer, cut to the input's limit for the call). A sample
passes only if every base and every plus input passes; `base_pass@k` counts those that pass the base inputs (a
program out of its whole --timeout counts as failing both).
"""

from __future__ import annotations

import base64
import inspect
import pickle
from pathlib import Path

from phi1_jax.eval import problems as problems_lib

# evalplus's own requirements pin model-provider SDKs it never imports here, whose protobuf<6 breaks
# sentencepiece and transformers: evalplus goes in without its requirements, the ones it uses come from the extra.
INSTALL = "pip install -e '.[plus]' && pip install --no-deps evalplus==0.3.1"
BENCHMARKS = {"humaneval_plus": "humaneval", "mbpp_plus": "mbpp"}  # -> evalplus's dataset name
# Seconds per program: the canonical and the sampled solution on every input (hundreds for some problems).
# evalplus caps each of its base and plus runs at 60 s.
DEFAULT_TIMEOUT_S = 60.0


def load(benchmark: str, path) -> dict[str, problems_lib.Problem]:
  """The problems of an evalplus file (HumanEvalPlus*.jsonl[.gz], MbppPlus*.jsonl) by task_id, in task order;
  ValueError naming the file when it is missing or not in evalplus's format."""
  if not path:
    raise ValueError(f"--benchmark={benchmark} needs --data_path=FILE (evalplus's released .jsonl)")
  if not Path(path).is_file():
    raise ValueError(f"--data_path={path}: file not found")
  try:
    from evalplus.data import humaneval, mbpp
  except ImportError as e:
    raise ValueError(f"--benchmark={benchmark} needs evalplus ({e}): {INSTALL}") from None

  module, reader = (humaneval, humaneval.get_human_eval_plus)
  override = "HUMANEVAL_OVERRIDE_PATH"
  if BENCHMARKS[benchmark] == "mbpp":
    module, reader, override = mbpp, mbpp.get_mbpp_plus, "MBPP_OVERRIDE_PATH"
  kept = getattr(module, override)
  setattr(module, override, str(path))  # evalplus reads its override variable once, at import
  try:
    tasks = reader()
  except (AssertionError, KeyError, TypeError, ValueError, OSError, EOFError) as error:
    raise ValueError(f"cannot read {benchmark} file {path}: {type(error).__name__}: {error}") from None
  finally:
    setattr(module, override, kept)
  if not tasks:
    raise ValueError(f"cannot read {benchmark} file {path}: no problems in it")
  prefix = {"humaneval": "HumanEval/", "mbpp": "Mbpp/"}[BENCHMARKS[benchmark]]
  stray = [t for t in tasks if not t.startswith(prefix)]
  if stray:
    raise ValueError(f"{benchmark} file {path} holds task {stray[0]!r}: its task_ids start with {prefix!r}")
  problems = {}
  for task_id in sorted(tasks, key=lambda t: int(t.split("/")[-1])):
    task = tasks[task_id]
    problems[task_id] = problems_lib.Problem(
      task_id=task_id,
      prompt=task["prompt"],
      test_program=check_program(BENCHMARKS[benchmark], task),
      entry_point=task["entry_point"],
      canonical_solution=task["canonical_solution"],
      prompt_in_program=False,  # the program starts with the sanitized solution, which holds the prompt's code
    )
  return problems


def stop_sequences(benchmark: str) -> list[str]:
  """HumanEval+ prompts are HumanEval's; MBPP+ prompts are docstrings, as the mbpp task's docstring format."""
  if BENCHMARKS[benchmark] == "humaneval":
    return list(problems_lib.STOP_SEQUENCES)
  return problems_lib.mbpp_stop_sequences("docstring")


def sanitize(problem: problems_lib.Problem, completion: str) -> str:
  """The solution evalplus scores for a completion: its sanitizer on the prompt and the completion."""
  from evalplus.sanitize import sanitize as evalplus_sanitize

  return evalplus_sanitize(problem.prompt + "\n" + completion, problem.entry_point)


def check_program(dataset: str, task: dict) -> str:
  """The code that follows a solution in its program: evalplus's check of every base and plus input."""
  from evalplus.eval import _special_oracle

  spec = {
    "dataset": dataset,
    "entry_point": task["entry_point"],
    "reference": task["prompt"] + task["canonical_solution"],
    "base": task["base_input"],
    "plus": task["plus_input"],
    "atol": task["atol"],
  }
  payload = base64.b64encode(pickle.dumps(spec, protocol=4)).decode("ascii")
  return (
    f"{inspect.getsource(_special_oracle)}\n"
    f"{inspect.getsource(_evalplus_check)}\n"
    f"_evalplus_check(globals(), {payload!r}, _surface_Area, _digit_distance_nums, _poly, "
    f"MBPP_OUTPUT_SET_EQ_TASKS, MBPP_OUTPUT_NOT_NONE_TASKS)\n"
  )


def _evalplus_check(program_globals, payload, _surface_Area, _digit_distance_nums, _poly, set_eq, not_none):
  # Runs inside the sandboxed program (its source is copied there): evalplus.evaluate.get_groundtruth, then
  # evalplus.eval.unsafe_execute for the base inputs and for the plus inputs, comparing line for line.
  import base64
  import copy
  import pickle
  import signal
  import time

  spec = pickle.loads(base64.b64decode(payload))
  entry_point, dataset = spec["entry_point"], spec["dataset"]
  reference_globals = {}
  exec(spec["reference"], reference_globals)
  reference = reference_globals[entry_point]
  candidate = program_globals[entry_point]

  def is_floats(x):  # evalplus.eval.is_floats (no numpy array can reach here: see allclose)
    if isinstance(x, float):
      return True
    if isinstance(x, (list, tuple)) and x:
      return all(isinstance(i, float) for i in x)
    return False

  def allclose(a, b, rtol, atol):
    # numpy.allclose's rule, |a - b| <= atol + rtol * |b| element by element (equal infinities close, NaN
    # never), for numbers and nested lists and tuples of them: numpy itself cannot be imported under the
    # child's guard (its import calls os.putenv), so no sandboxed program returns a numpy value.
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
      if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or len(a) != len(b):
        return False
      return all(allclose(x, y, rtol, atol) for x, y in zip(a, b))
    if not isinstance(a, (int, float, complex)) or not isinstance(b, (int, float, complex)):
      raise TypeError(f"cannot compare {type(a).__name__} with {type(b).__name__} within a tolerance")
    return a == b or abs(a - b) <= atol + rtol * abs(b)

  stages = []
  for stage in ("base", "plus"):
    expected, limits = [], []
    for index, inp in enumerate(spec[stage]):
      inp = copy.deepcopy(inp)
      start = time.time()
      try:
        out = reference(*inp)
      except Exception as error:
        raise RuntimeError(f"the canonical solution fails on {stage} input {index}: {error!r:.200}") from None
      limits.append(max(1.0, 4.0 * (time.time() - start)))  # DEFAULT_MIN_TIME_LIMIT, DEFAULT_GT_TIME_LIMIT_FACTOR
      expected.append(out is not None if dataset == "mbpp" and entry_point in not_none else out)
    stages.append((stage, expected, limits))

  for stage, expected, limits in stages:
    atol = spec["atol"]
    for index, inp in enumerate(spec[stage]):
      inp = copy.deepcopy(inp)
      where = f"{stage} input {index} of {len(expected)}"
      # The program's timer (phi1_jax.eval.child's SIGALRM, whose handler raises its TimeoutException) is
      # cut to the input's limit for the call, then set back to what the program has left.
      program_left = signal.getitimer(signal.ITIMER_REAL)[0]
      limit = min(limits[index], program_left) if program_left > 0 else limits[index]
      start = time.time()
      signal.setitimer(signal.ITIMER_REAL, limit)
      try:
        out = candidate(*inp)
      except Exception as error:
        if type(error).__name__ != "TimeoutException":
          raise AssertionError(f"{where}: {type(error).__name__}: {error}"[:300]) from None
        if limit == program_left:  # the program's own time is up
          raise
        raise AssertionError(f"{where}: over its {limit:.2f}s limit") from None
      finally:
        if program_left > 0:
          signal.setitimer(signal.ITIMER_REAL, max(1e-3, program_left - (time.time() - start)))
        else:
          signal.setitimer(signal.ITIMER_REAL, 0)
      exp = expected[index]
      try:
        exact_match = out == exp
        if dataset == "mbpp":
          if "are_equivalent" == entry_point:  # Mbpp/164
            exact_match = exact_match or True
          elif "sum_div" == entry_point:  # Mbpp/295
            exact_match = exact_match or out == 0
          elif "surface_Area" == entry_point:  # Mbpp/581
            exact_match = exact_match or abs(out - _surface_Area(*inp)) <= atol
          elif "digit_distance_nums" == entry_point:  # Mbpp/558
            exact_match = exact_match or out == _digit_distance_nums(*inp)
          elif entry_point in set_eq:
            exact_match = set(out) == set(exp)
          elif entry_point in not_none:
            exact_match = out == exp if isinstance(out, bool) else exp == (out is not None)
        if dataset == "humaneval" and "find_zero" == entry_point:  # HumanEval/32: any zero within atol
          # evalplus 0.3.1 `continue`s here before it records the pass, so it fails every sample of the task;
          # a zero within atol passes here, as its oracle means.
          assert abs(_poly(*inp, out)) <= atol
          continue
        if atol == 0 and is_floats(exp):
          atol = 1e-6  # evalplus: kept for the stage's later inputs
        if not exact_match and atol != 0:
          assert type(out) == type(exp)
          if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp)
          assert allclose(out, exp, rtol=1e-07, atol=atol)
        else:
          assert exact_match
      except Exception as error:
        if type(error).__name__ == "TimeoutException":
          raise
        raise AssertionError(f"{where}: wrong output {out!r:.120}") from None


def solutions(samples: list[dict], problems: dict, task_ids: list[str]) -> list[str]:
  """Each sample's sanitized solution (what its program runs)."""
  return [sanitize(problems[t], s["completion"]) for t, s in zip(task_ids, samples)]


def passed_base(result: str) -> bool:
  """Whether a plus program's result says the base inputs all passed."""
  return result == "passed" or result.startswith("failed: AssertionError: plus input ")
