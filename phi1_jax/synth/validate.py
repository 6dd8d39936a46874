"""Which generated answers become documents: textbook checks and exercise parsing + checks.

Each check returns a rejection reason (a short snake_case string, counted in the manifest) or None.
Exercises run their own tests in the project's sandbox (`phi1_jax.eval.runner`).
"""

from __future__ import annotations

import ast
import collections
import re

from phi1_jax.eval import runner

FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
# An answer that declines, or talks about itself / the request instead of teaching.
REFUSAL = re.compile(
  r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I can(?:no|')t (?:help|assist|write|provide|do)|"
  r"I am unable to|I'm unable to|As an AI|as a language model|I'm not able to)\b",
  re.IGNORECASE,
)
META_OPENING = re.compile(
  r"^\W*(sure|certainly|of course|absolutely|okay|ok|here is|here's|below is|great question)\b", re.IGNORECASE
)
META_CLOSING = re.compile(
  r"(I hope (this|that) helps|let me know if|feel free to ask|happy to help|hope you (enjoy|found))", re.IGNORECASE
)
PYTHON_TAGS = {"", "python", "py", "python3", "pycon"}


def code_blocks(text: str) -> list[tuple[str, str]]:
  """(language tag, code) of each fenced block."""
  return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def _parses(code: str) -> bool:
  try:
    ast.parse(code)
  except (SyntaxError, ValueError):
    return False
  return True


def _pycon_to_code(code: str) -> str:
  """The source lines of an interactive session (>>> and ... prompts), which is what parses."""
  lines = [line[4:] for line in code.splitlines() if line.startswith((">>> ", "... "))]
  return "\n".join(lines) if lines else code


def textbook_rejection(
  text: str, finish_reason: str | None = None, min_chars: int = 1000, require_code: bool = True
) -> str | None:
  """Why a textbook answer is not kept, or None to keep it. The reasons, checked in this order:

  truncated (cut by max_tokens), refusal, too_short (under `min_chars`), meta_boilerplate ("Sure,
  here is...", "I hope this helps"), unclosed_code_fence, no_code (no Python code block, when
  `require_code`), code_syntax_error (a Python block that does not parse), repetitive (over 30%
  of its long lines repeat).
  """
  if finish_reason == "length":
    return "truncated"
  stripped = text.strip()
  if REFUSAL.search(stripped[:400]) or REFUSAL.search(stripped[-400:]):
    return "refusal"
  if len(stripped) < min_chars:
    return "too_short"
  if META_OPENING.search(stripped[:80]) or META_CLOSING.search(stripped[-300:]):
    return "meta_boilerplate"
  if stripped.count("```") % 2:
    return "unclosed_code_fence"
  blocks = [(tag, code) for tag, code in code_blocks(stripped) if tag in PYTHON_TAGS]
  if require_code and not blocks:
    return "no_code"
  for tag, code in blocks:
    if not _parses(_pycon_to_code(code) if tag == "pycon" or code.lstrip().startswith(">>>") else code):
      return "code_syntax_error"
  lines = [line.strip() for line in stripped.splitlines() if len(line.strip()) > 20]
  if len(lines) >= 10 and sum(collections.Counter(lines).values()) - len(set(lines)) > 0.3 * len(lines):
    return "repetitive"
  return None


def parse_exercise(text: str, function_name: str) -> tuple[dict | None, str | None]:
  """({"prompt", "solution", "tests", "entry_point"}, None) or (None, reason).

  The prompt is the code up to the end of the function's docstring (imports, signature,
  docstring), the solution the rest of the function: prompt + solution is the training text.
  """
  if REFUSAL.search(text[:400]):
    return None, "refusal"
  blocks = [code for tag, code in code_blocks(text) if tag in PYTHON_TAGS]
  if len(blocks) < 2:
    return None, "not_two_code_blocks"
  solution_code, tests = blocks[0].strip("\n"), "\n".join(blocks[1:]).strip("\n")
  try:
    tree = ast.parse(solution_code)
    test_tree = ast.parse(tests)
  except (SyntaxError, ValueError):
    return None, "syntax_error"
  functions = [node for node in tree.body if isinstance(node, ast.FunctionDef)]
  function = next((f for f in functions if f.name == function_name), None)
  if function is None:
    return None, "wrong_function_name" if functions else "no_function"
  if ast.get_docstring(function) is None:
    return None, "no_docstring"
  if len(function.body) < 2:
    return None, "no_solution_body"
  calls = [
    node
    for node in ast.walk(test_tree)
    if isinstance(node, ast.Assert) and any(isinstance(n, ast.Name) and n.id == function_name for n in ast.walk(node))
  ]
  if not calls:
    return None, "no_tests"
  # Split after the docstring's last line: HumanEval's prompt / completion boundary.
  lines = solution_code.splitlines(keepends=True)
  docstring_end = function.body[0].end_lineno
  prompt = "".join(lines[:docstring_end])
  solution = "".join(lines[docstring_end:])
  if not prompt.endswith("\n"):
    prompt += "\n"
  return {
    "prompt": prompt,
    "solution": solution.rstrip() + "\n",
    "tests": tests + "\n",
    "entry_point": function_name,
  }, None


def exercise_program(exercise: dict) -> str:
  return exercise["prompt"] + exercise["solution"] + "\n\n" + exercise["tests"]


def execution_rejection(result: runner.ExecResult) -> str | None:
  """None when the exercise's own tests passed in the sandbox, else a reason."""
  if result.passed:
    return None
  if result.result == "timed out":
    return "tests_timed_out"
  if "more than" in result.result or "crashed" in result.result or "exited without result" in result.result:
    return "tests_crashed_or_escaped"
  return "tests_failed"


def check_exercises(
  exercises: list[dict], timeout_s: float = 3.0, memory_mb: int = 512, workers: int = 1, sandbox: str = "bwrap"
) -> list[str | None]:
  """Runs each exercise's solution against its own tests in the sandbox: reason or None each."""
  results = runner.execute_programs(
    [exercise_program(e) for e in exercises], timeout_s=timeout_s, memory_mb=memory_mb, workers=workers, sandbox=sandbox
  )
  return [execution_rejection(r) for r in results]
