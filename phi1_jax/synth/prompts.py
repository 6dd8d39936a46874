"""Seeded prompt sampler: prompt i depends only on (seed, i), so a rerun asks the same questions.

Textbooks: topic x subtopic x audience x style x (example kind, length, difficulty, opening).
Exercises: topic x subtopic x difficulty x a function name `verb_noun` the answer must use
(the paper's "constrained function names").
The lists ship in this package (`topics.txt`: 300+ topics with subtopics; `prompt_parts.json`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from pathlib import Path

from phi1_jax.cli import UserError

HERE = Path(__file__).resolve().parent
DEFAULT_TOPICS = HERE / "topics.txt"
PROMPT_PARTS = HERE / "prompt_parts.json"


@dataclasses.dataclass(frozen=True)
class Topic:
  area: str
  name: str
  subtopics: tuple[str, ...]


def load_topics(path: str | Path = DEFAULT_TOPICS) -> list[Topic]:
  """Topics from a file of "## area" headers and "topic: sub; sub; ..." lines (# starts a comment)."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f"--topics {path}: not found")
  topics, area = [], "general"
  for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    line = raw.strip()
    if line.startswith("##"):
      area = line.lstrip("#").strip()
      continue
    if not line or line.startswith("#"):
      continue
    name, colon, rest = line.partition(":")
    subtopics = tuple(s.strip() for s in rest.split(";") if s.strip())
    if not colon or not name.strip() or not subtopics:
      raise UserError(f"--topics {path}:{lineno}: want 'topic: subtopic; subtopic; ...', got {line[:80]!r}")
    topics.append(Topic(area, name.strip(), subtopics))
  if not topics:
    raise UserError(f"--topics {path}: no topics")
  names = [t.name for t in topics]
  if len(set(names)) != len(names):
    dup = next(n for n in names if names.count(n) > 1)
    raise UserError(f"--topics {path}: topic {dup!r} appears twice")
  return topics


def load_parts() -> dict:
  return json.loads(PROMPT_PARTS.read_text(encoding="utf-8"))


def _rng(seed: int, i: int) -> random.Random:
  digest = hashlib.sha256(f"phi1_jax.synth:{seed}:{i}".encode()).digest()
  return random.Random(int.from_bytes(digest[:8], "big"))


def request_seed(seed: int, i: int) -> int:
  """The sampling seed sent with request i (also makes identical prompt texts distinct requests)."""
  return _rng(seed, i).getrandbits(31)


TEXTBOOK_TEMPLATE = """\
Write a section of a Python textbook for {audience}.
Topic: {topic} ({area}); focus on: {subtopic}.
Style: {style}. Level: {difficulty}. Length: {length}.
Include {example_kind}. Open with {opening}.

Rules: write only the textbook text, in Markdown. Start directly with the content: no preamble such \
as "Sure" or "Here is", no closing remarks, no mention of these instructions. Do not start with \
"Welcome", "Imagine", "In this section" or "Have you ever". Put every piece of code in a ```python \
fenced block that is valid Python 3 as written."""

EXERCISE_TEMPLATE = """\
Write one Python programming exercise with its solution, for a student learning basic coding concepts.
Topic: {topic} ({area}); focus on: {subtopic}. Difficulty: {difficulty}.
The function must be named `{function_name}`; choose what it does so the name fits the topic.

Answer with exactly two ```python fenced blocks and nothing else:
1. The function: its signature with type hints, a docstring that states the task precisely (inputs, \
output, one or two examples), then the solution body. Standard library imports only, placed above \
the function.
2. Tests: at least three `assert` statements calling `{function_name}`, including an edge case."""


def textbook_prompt(seed: int, i: int, topics: list[Topic], parts: dict, template: str | None = None) -> dict:
  """The prompt for textbook i and the choices behind it."""
  rng = _rng(seed, i)
  topic = rng.choice(topics)
  choice = {
    "area": topic.area,
    "topic": topic.name,
    "subtopic": rng.choice(topic.subtopics),
    "audience": rng.choice(parts["audiences"]),
    "style": rng.choice(parts["styles"]),
    "example_kind": rng.choice(parts["example_kinds"]),
    "length": rng.choice(parts["lengths"]),
    "difficulty": rng.choice(parts["difficulties"]),
    "opening": rng.choice(parts["openings"]),
  }
  return {"prompt": (template or TEXTBOOK_TEMPLATE).format(**choice), **choice}


def exercise_prompt(seed: int, i: int, topics: list[Topic], parts: dict, template: str | None = None) -> dict:
  """The prompt for exercise i and the choices behind it (including the required function name)."""
  rng = _rng(seed, i)
  topic = rng.choice(topics)
  choice = {
    "area": topic.area,
    "topic": topic.name,
    "subtopic": rng.choice(topic.subtopics),
    "difficulty": rng.choice(parts["difficulties"]),
    "function_name": f"{rng.choice(parts['exercise_verbs'])}_{rng.choice(parts['exercise_nouns'])}",
  }
  return {"prompt": (template or EXERCISE_TEMPLATE).format(**choice), **choice}


PROMPTERS = {"textbooks": textbook_prompt, "exercises": exercise_prompt}


def load_template(path: str | Path, kind: str) -> str:
  """A prompt template file (str.format fields: those of the kind's default); UserError if unusable."""
  path = Path(path)
  if not path.is_file():
    raise UserError(f"--template {path}: not found")
  template = path.read_text(encoding="utf-8")
  topics = [Topic("area", "topic", ("subtopic",))]
  try:
    PROMPTERS[kind](0, 0, topics, load_parts(), template)
  except (KeyError, IndexError, ValueError) as error:
    raise UserError(
      f"--template {path}: unusable field or brace ({error!r}); fields: "
      f"{', '.join(sorted(PROMPTERS[kind](0, 0, topics, load_parts())))}"
    ) from None
  return template
