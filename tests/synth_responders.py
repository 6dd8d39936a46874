"""Scripted LLM answers for synthesis tests: mostly good, some bad on purpose, fixed by the prompt.

An answer depends only on the request (prompt and seed), like a cached model's would. For a
request whose hash h gives `h % 10`:
  textbooks: 0 refusal, 1 a code block that does not parse, 2 one fixed text (near duplicates of
             each other), else a good and unique textbook;
  exercises: 0 does not parse, 1 fails its own tests, 2 loops forever, 3 tries to escape the
             sandbox (os.system, os.kill, shutil.rmtree), else a good exercise.
"""

from __future__ import annotations

import hashlib
import random
import re

from llm_servers import canonical, prompt_text

WORDS = (
  "value list loop index string number function variable result input output program data "
  "element count total sum check return print range item key dictionary set tuple class object "
  "method module file line word character test case example step order small large first last "
  "next previous empty full simple careful clear short long student teacher problem answer idea "
  "pattern rule reason change copy compare search sort split join build learn read write"
).split()


def _rng(endpoint: str, body: dict) -> tuple[int, random.Random]:
  h = int(hashlib.sha256(canonical(body).encode()).hexdigest()[:12], 16)
  return h, random.Random(h)


def _sentence(rng: random.Random) -> str:
  words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
  return " ".join(words).capitalize() + "."


def textbook_responder(endpoint: str, body: dict) -> str:
  h, rng = _rng(endpoint, body)
  topic = (re.search(r"Topic: (.*?) \(", prompt_text(endpoint, body)) or [None, "Python"])[1]
  kind = h % 10
  if kind == 0:
    return "I'm sorry, but I can't help with writing that section."
  if kind == 2:
    rng = random.Random(2)  # the same text for every such prompt
    topic = "a fixed topic"
  paragraphs = [" ".join(_sentence(rng) for _ in range(5)) for _ in range(4)]
  name = f"step_{rng.randrange(10**6)}"
  code = f"def {name}(values):\n    return [v * {rng.randint(2, 9)} for v in values]\n\nprint({name}([1, 2, 3]))\n"
  if kind == 1:
    code = f"def {name}(values)\n    return values\n"
  return (
    f"## {topic}\n\n{paragraphs[0]}\n\n{paragraphs[1]}\n\n```python\n{code}```\n\n{paragraphs[2]}\n\n{paragraphs[3]}\n"
  )


def exercise_responder(endpoint: str, body: dict) -> str:
  h, rng = _rng(endpoint, body)
  name = (re.search(r"named `(\w+)`", prompt_text(endpoint, body)) or [None, "solve"])[1]
  kind = h % 10
  factor = rng.randint(2, 9)
  doc = " ".join(_sentence(rng) for _ in range(2))
  body_lines = ["    total = 0", "    for value in values:", f"        total += value * {factor}", "    return total"]
  if kind == 1:
    body_lines[-1] = "    return total + 1"
  elif kind == 2:
    body_lines = ["    while True:", "        pass"]
  elif kind == 3:
    body_lines = [
      "    import os, shutil",
      "    os.system('touch /tmp/escaped')",
      "    os.kill(os.getppid(), 9)",
      "    shutil.rmtree('/tmp')",
      "    return sum(values) * " + str(factor),
    ]
  signature = f"def {name}(values: list[int]) -> int:" if kind != 0 else f"def {name}(values: list[int]) -> int"
  solution = "\n".join(
    [
      signature,
      f'    """{doc}',
      "",
      f"    Return the sum of the values times {factor}.",
      f"    >>> {name}([1, 2])",
      f"    {3 * factor}",
      '    """',
      *body_lines,
    ]
  )
  tests = "\n".join(
    [f"assert {name}([1, 2]) == {3 * factor}", f"assert {name}([]) == 0", f"assert {name}([5]) == {5 * factor}"]
  )
  return f"```python\n{solution}\n```\n\n```python\n{tests}\n```\n"
