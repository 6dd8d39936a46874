"""The Unconventional problem set: well formed, every canonical solution passes, every shipped mutant of it
fails (the tests are strong enough), and the project's decontamination finds none of it in HumanEval or MBPP."""

import ast
import collections
import json
from pathlib import Path

import pytest

from conftest import REPO, run_module
from phi1_jax.eval import problems as problems_lib, runner

MUTANTS = REPO / "tests/data/unconventional_mutants.jsonl"
# shared/ sits beside the repository (CI) or further up (a worktree); the nearest one is used
MBPP_PATH = next(
  (p / "shared/data/mbpp/mbpp.jsonl" for p in REPO.parents if (p / "shared/data/mbpp/mbpp.jsonl").is_file()),
  REPO / "shared/data/mbpp/mbpp.jsonl",
)


def _mutants() -> list[dict]:
  return [json.loads(line) for line in MUTANTS.read_text().splitlines()]


def test_the_set_has_50_problems_in_human_eval_format_each_with_5_asserts_and_3_mutants():
  problems = problems_lib.load_unconventional()
  assert list(problems) == [f"Unconventional/{i}" for i in range(len(problems))]
  assert len(problems) >= 50
  assert len({p.entry_point for p in problems.values()}) == len(problems)
  mutants_per_task = collections.Counter(m["task_id"] for m in _mutants())
  for task_id, problem in problems.items():
    signature = ast.parse(problem.prompt + "    pass\n").body[-1]
    assert isinstance(signature, ast.FunctionDef) and signature.name == problem.entry_point, task_id
    assert ast.get_docstring(signature) and ">>> " in problem.prompt, task_id
    check = next(node for node in ast.parse(problem.test_program).body if isinstance(node, ast.FunctionDef))
    assert check.name == "check" and sum(isinstance(node, ast.Assert) for node in ast.walk(check)) >= 5, task_id
    assert problem.test_program.endswith(f"check({problem.entry_point})"), task_id
    assert mutants_per_task[task_id] >= 3, task_id
  assert set(mutants_per_task) == set(problems)


def test_every_canonical_solution_passes_and_every_mutant_fails():
  problems = problems_lib.load_unconventional()
  mutants = _mutants()
  programs = [problems_lib.build_program(p, p.canonical_solution) for p in problems.values()]
  programs += [problems_lib.build_program(problems[m["task_id"]], m["solution"]) for m in mutants]
  results = runner.execute_programs(programs, timeout_s=5.0)
  canonical, mutated = results[: len(problems)], results[len(problems) :]
  assert [t for t, r in zip(problems, canonical) if not r.passed] == []
  survivors = [(m["task_id"], m["kind"]) for m, r in zip(mutants, mutated) if r.passed]
  assert survivors == []
  # a mutant must fail its tests, not crash the program before they run
  assert all(r.result.startswith("failed: ") for r in mutated)


def test_execute_command_scores_the_canonical_solutions_of_the_set_at_pass_at_1_of_one(tmp_path):
  problems = problems_lib.load_unconventional()
  samples = tmp_path / "samples.jsonl"
  samples.write_text(
    "".join(json.dumps({"task_id": t, "completion": p.canonical_solution}) + "\n" for t, p in problems.items())
  )
  done = run_module("phi1_jax.eval.execute", "--benchmark=unconventional", f"--samples={samples}", "--k=1", timeout=120)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout.splitlines()[-1]) == {"pass@1": 1.0}
  summary = json.loads(Path(f"{samples}_summary.json").read_text())
  assert summary["n_passed"] == summary["n_problems"] == len(problems)


@pytest.mark.skipif(not MBPP_PATH.is_file(), reason="MBPP is not in shared/data/mbpp")
def test_decontamination_against_humaneval_and_mbpp_removes_none_of_the_set(tmp_path):
  problems = problems_lib.load_unconventional()
  documents = tmp_path / "unconventional.jsonl"
  documents.write_text(
    "".join(
      json.dumps({"id": t, "text": p.prompt + p.canonical_solution + p.test_program}) + "\n"
      for t, p in problems.items()
    )
  )
  out = tmp_path / "decontam"
  done = run_module(
    "phi1_jax.decontam",
    "--input",
    str(documents),
    f"--out={out}",
    "--benchmarks=humaneval,mbpp",
    f"--mbpp_path={MBPP_PATH}",
    timeout=300,
  )
  assert done.returncode == 0, done.stderr
  assert (out / "removed.jsonl").read_text() == ""
  counts = json.loads((out / "report.json").read_text())["counts"]
  assert (counts["documents"], counts["kept"], counts["removed"]) == (len(problems), len(problems), 0)
  assert counts["flagged_by"] == {"exact": 0, "ngram": 0, "ast": 0, "embed": 0}


@pytest.mark.skipif("--reference" not in (REPO / "phi1_jax/eval/__main__.py").read_text(), reason="no --reference yet")
def test_eval_reference_passes_every_problem_of_the_set(tmp_path):
  done = run_module(
    "phi1_jax.eval", "--benchmark=unconventional", "--reference", f"--out={tmp_path / 'ref'}", timeout=300
  )
  assert done.returncode == 0, done.stderr
  summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
  assert summary["pass@1"] == 1.0 and summary["n_passed"] == summary["n_problems"] == 50
