"""LLM grading of evaluated samples: any OpenAI-compatible endpoint grades each completion 0-10.

    python -m phi1_jax.eval ... --grader_base_url=http://127.0.0.1:8000/v1 --grader_model=NAME

The prompt (`--grader_prompt=FILE`, default the shipped rubric data/grader_prompt.txt: correctness,
approach, clarity) holds the problem, the reference solution, the completion and the test outcome
("passed" or the failure, e.g. "failed: AssertionError"), in the placeholders {problem},
{reference}, {completion}, {outcome}. Where the problem's prompt is code the completion continues
(HumanEval, MBPP's docstring format), reference and completion are shown with the prompt before them;
of a few-shot prompt (MBPP's austin3shot) the problem is the task after the shots.
The answer's last non-empty line must be exactly `Grade: N`, N an integer 0..10; anything else is no
grade (null, counted as `ungraded`). Requests go through phi1_jax.stages.llm (retries, caps, the
cache under --out), so a killed evaluation, rerun, pays for no grade twice.

Rerun rule: the grader is not part of settings.json. A finished evaluation rerun with a grader is
graded (its samples are not made again); rerun with the same grader it has nothing to do unless some
grades are missing (a failed request, a cap: `grade_missing`), which it asks again; a different
grader (model, prompt, max tokens, temperature) is refused: evaluate into another --out.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import re
import sys
from pathlib import Path

from phi1_jax import cli
from phi1_jax.stages import llm as llm_lib

PREFIX = "grader_"
PLACEHOLDERS = ("{problem}", "{reference}", "{completion}", "{outcome}")
GRADE_LINE = re.compile(r"Grade: (10|[0-9])")


def add_args(parser) -> None:
  """The --grader_* flags: the LLM client's, prefixed, and the rubric's."""
  group = llm_lib.add_args(parser, prefix=PREFIX)
  group.title = "LLM grading"
  group.description = "on when --grader_base_url is given (then --grader_model too); see phi1_jax/eval/grade.py"
  group.add_argument(
    "--grader_prompt", default=None, help="rubric template (default: phi1_jax/eval/data/grader_prompt.txt)"
  )
  group.add_argument("--grader_max_new_tokens", type=int, default=512, help="max_tokens of each grader answer")
  group.add_argument("--grader_temperature", type=float, default=0.0)


def default_prompt_path():
  """The shipped rubric."""
  return importlib.resources.files("phi1_jax.eval") / "data" / "grader_prompt.txt"


def check_args(args) -> dict | None:
  """The grader settings (what decides the grades; the rerun rule compares them), or None when
  --grader_base_url is not given; ValueError naming the first bad grader flag."""
  if not args.grader_base_url:
    if args.grader_model or args.grader_prompt:
      raise ValueError("--grader_model and --grader_prompt need --grader_base_url=URL (the grading endpoint)")
    return None
  if not args.grader_model:
    raise ValueError("--grader_base_url needs --grader_model=NAME (the model the endpoint serves)")
  try:
    llm_lib.check_args(args, prefix=PREFIX)
  except llm_lib.LLMError as e:
    raise ValueError(str(e)) from None
  if args.grader_max_new_tokens < 1:
    raise ValueError(f"--grader_max_new_tokens={args.grader_max_new_tokens}: must be >= 1")
  if args.grader_temperature < 0:
    raise ValueError(f"--grader_temperature={args.grader_temperature}: must be >= 0")
  path = Path(args.grader_prompt) if args.grader_prompt else default_prompt_path()
  try:
    template = path.read_text(encoding="utf-8")
  except OSError as e:
    raise ValueError(f"--grader_prompt={path}: {e.strerror}") from None
  if "{completion}" not in template:
    raise ValueError(f"--grader_prompt={path}: the template has no {{completion}} placeholder")
  return {
    "model": args.grader_model,
    "prompt_sha256": hashlib.sha256(template.encode()).hexdigest(),
    "max_new_tokens": args.grader_max_new_tokens,
    "temperature": args.grader_temperature,
    "template": template,
  }


def recorded(settings: dict) -> dict:
  """The settings as summary.json keeps them (the template by its hash)."""
  return {k: v for k, v in settings.items() if k != "template"}


def has_work(summary: dict, settings: dict | None, out: Path) -> bool:
  """Whether a finished evaluation (its summary) is to be graded by this grader; ValueError when
  another grader graded it."""
  if settings is None:
    return False
  before = summary.get("grader")
  if before is None:
    return True
  diff = cli.settings_diff(before["settings"], recorded(settings))
  if diff:
    raise ValueError(f"--out={out} holds grades by another grader ({'; '.join(diff)}); choose another --out")
  return summary["grade_missing"] > 0


def parse_grade(text: str) -> int | None:
  """N from a last non-empty line that is exactly `Grade: N` (0..10), else None."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  found = GRADE_LINE.fullmatch(lines[-1]) if lines else None
  return int(found[1]) if found else None


def grader_prompt(template: str, problem, completion: str, outcome: str) -> str:
  """The template with its placeholders filled in one pass (a completion that contains
  "{outcome}" stays as written)."""

  def code(body: str) -> str:
    return problem.prompt + body if problem.prompt_in_program else body

  # a few-shot prompt (MBPP's austin3shot) ends with the task after its shots' last [DONE]
  task = problem.prompt if problem.prompt_in_program else problem.prompt.rpartition("[DONE]\n")[2]
  fills = {
    "{problem}": task,
    "{reference}": code(problem.canonical_solution),
    "{completion}": code(completion),
    "{outcome}": outcome,
  }
  return re.sub("|".join(map(re.escape, PLACEHOLDERS)), lambda m: fills[m[0]], template)


def grade_rows(rows: list[dict], problems: dict, args, out: Path, settings: dict) -> tuple[dict, str | None]:
  """Adds `grade` and `grade_rationale` to each executed row ({task_id, completion, result, ...});
  returns the summary's grading part and, when some grades are missing, one line saying why.

  grade_rationale is the answer without its grade line (the whole answer when it has no grade, null
  when no answer came: the request failed or a cap stopped it, counted as `grade_missing`)."""

  def request(row: dict) -> llm_lib.Request:
    content = grader_prompt(settings["template"], problems[row["task_id"]], row["completion"], row["result"])
    return llm_lib.chat_request(
      settings["model"],
      [{"role": "user", "content": content}],
      max_tokens=settings["max_new_tokens"],
      temperature=settings["temperature"],
    )

  requests = [request(r) for r in rows]
  client = llm_lib.from_args(args, out, prefix=PREFIX, total=len(requests))

  async def ask_all():
    try:
      return await asyncio.gather(*(client.ask(request) for request in requests), return_exceptions=True)
    finally:
      await client.aclose()

  print(f"grading {len(rows)} samples with {settings['model']} at {args.grader_base_url}", file=sys.stderr)
  answers = asyncio.run(ask_all())
  stopped = None
  for row, answer in zip(rows, answers):
    if isinstance(answer, BaseException):
      if not isinstance(answer, llm_lib.LLMError):
        raise answer
      if isinstance(answer, (llm_lib.EndpointError, llm_lib.BudgetExhausted)):
        stopped = stopped or str(answer)
      row.update(grade=None, grade_rationale=None)
      continue
    grade = parse_grade(answer.text)
    rationale = answer.text.strip()
    if grade is not None:
      rationale = rationale.rpartition("\n")[0].strip()  # all but the grade line
    row.update(grade=grade, grade_rationale=rationale)
  grades = [r["grade"] for r in rows if r["grade"] is not None]
  llm_summary = client.summary()
  part = {
    "grade_mean": sum(grades) / len(grades) if grades else None,
    "graded": len(grades),
    "ungraded": sum(r["grade"] is None and r["grade_rationale"] is not None for r in rows),
    "grade_missing": sum(r["grade_rationale"] is None for r in rows),
    "grader": {"settings": recorded(settings), "base_url": args.grader_base_url, "llm_this_run": llm_summary},
  }
  if not part["grade_missing"]:
    return part, None
  why = stopped or llm_lib.describe_failures(llm_summary["failures"])
  return (
    part,
    f"{part['grade_missing']} of {len(rows)} samples not graded ({why}); a rerun asks for those again",
  )
