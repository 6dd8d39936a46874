"""Small HumanEval+ and MBPP+ files in evalplus's released format, and samples that exercise its scoring."""

import json
from pathlib import Path

_HE_PROMPT_ADD = 'def add(x: int, y: int) -> int:\n    """Add two numbers.\n    >>> add(2, 3)\n    5\n    """\n'
_HE_PROMPT_MEAN = (
  "from typing import List\n\n\ndef mean(xs: List[float]) -> float:\n"
  '    """The arithmetic mean of a non-empty list.\n    >>> mean([1.0, 2.0])\n    1.5\n    """\n'
)
_HE_PROMPT_PAL = 'def is_palindrome(text: str) -> bool:\n    """Whether text reads the same backwards.\n    >>> is_palindrome("aba")\n    True\n    """\n'
_HE_PROMPT_ROOT = (
  "import math\n\n\ndef poly(xs: list, x: float):\n    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\n\n\n"
  'def find_zero(xs: list):\n    """A zero of the polynomial with coefficients xs (odd degree).\n    """\n'
)
_FIND_ZERO = (
  "    begin, end = -1.0, 1.0\n    while poly(xs, begin) * poly(xs, end) > 0:\n        begin *= 2.0\n        end *= 2.0\n"
  "    while end - begin > 1e-10:\n        center = (begin + end) / 2.0\n"
  "        if poly(xs, center) * poly(xs, begin) > 0:\n            begin = center\n        else:\n            end = center\n"
  "    return begin\n"
)

HUMANEVAL_PLUS = [
  {
    "task_id": "HumanEval/0",
    "prompt": _HE_PROMPT_ADD,
    "entry_point": "add",
    "canonical_solution": "    return x + y\n",
    "contract": "",
    "base_input": [[2, 3], [0, 0]],
    "plus_input": [[-7, 7], [10**12, 1], [-1, -1]],
    "atol": 0,
  },
  {
    "task_id": "HumanEval/1",
    "prompt": _HE_PROMPT_MEAN,
    "entry_point": "mean",
    "canonical_solution": "    return sum(xs) / len(xs)\n",
    "contract": "",
    "base_input": [[[1.0, 2.0]], [[0.1, 0.2, 0.3]]],
    "plus_input": [[[1e-3, 7.7, 3.3]], [[-2.5]], [[0.1] * 10]],
    "atol": 0,
  },
  {
    "task_id": "HumanEval/2",
    "prompt": _HE_PROMPT_PAL,
    "entry_point": "is_palindrome",
    "canonical_solution": "    return text == text[::-1]\n",
    "contract": "",
    "base_input": [["aba"], ["ab"], ["xyzzyx"]],
    "plus_input": [[""], ["a"], ["abca"]],
    "atol": 0,
  },
  {
    "task_id": "HumanEval/32",
    "prompt": _HE_PROMPT_ROOT,
    "entry_point": "find_zero",
    "canonical_solution": _FIND_ZERO,
    "contract": "",
    "base_input": [[[1, 2]], [[-6, 11, -6, 1]]],
    "plus_input": [[[5, 0, 0, 1]], [[-3, 1, 0, 2]]],
    "atol": 1e-4,
  },
]

# The completions, in task order, each with how evalplus's evaluator scores it (base status, plus status).
HUMANEVAL_SAMPLES = [
  ("HumanEval/0", "    return x + y\n", "pass", "pass"),
  # Prose and a call after the code: the raw program is a syntax error, the sanitized one passes.
  ("HumanEval/0", "    return y + x\n\nprint(add(1, 2))\nThis adds the two numbers.\n", "pass", "pass"),
  ("HumanEval/0", "    return x + y if x >= 0 else y - x\n", "pass", "fail"),
  ("HumanEval/0", "    while True:\n        pass\n", "fail", "fail"),  # over the 1 s limit of an input
  # Floats: equal to the last bits or not, within the 1e-6 evalplus enforces.
  ("HumanEval/1", "    return sum(xs) * (1.0 / len(xs))\n", "pass", "pass"),
  ("HumanEval/1", "    return round(sum(xs) / len(xs), 1)\n", "pass", "fail"),
  ("HumanEval/1", "    return sum(xs) // len(xs)\n", "fail", "fail"),
  ("HumanEval/2", "    return len(text) > 1 and text == text[::-1]\n", "pass", "fail"),
  ("HumanEval/2", "    return all(a == b for a, b in zip(text, reversed(text)))\n", "pass", "pass"),
  ("HumanEval/2", "    raise ValueError(text)\n", "fail", "fail"),
  # find_zero: any zero within atol passes (evalplus's special oracle), not only the canonical one; evalplus
  # 0.3.1 itself fails every sample of HumanEval/32 (plus.py says why), so the comparison with it leaves it out.
  ("HumanEval/32", "    return {(1, 2): -0.5, (-6, 11, -6, 1): 3.0}.get(tuple(xs), 0.0)\n", "pass", "fail"),
  ("HumanEval/32", _FIND_ZERO.replace("1e-10", "1e-12"), "pass", "pass"),
  ("HumanEval/32", "    return 0.0\n", "fail", "fail"),
]

_MBPP_PROMPT = '"""\n{text}\n{test}\n"""\n'
MBPP_PLUS = [
  {
    "task_id": "Mbpp/2",
    "prompt": _MBPP_PROMPT.format(
      text="Write a function to find the shared elements from the given two lists.",
      test="assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
    ),
    "entry_point": "similar_elements",
    "canonical_solution": "\ndef similar_elements(test_tup1, test_tup2):\n  return tuple(set(test_tup1) & set(test_tup2))\n",
    "contract": "",
    "base_input": [[[3, 4, 5, 6], [5, 7, 4, 10]], [[1, 2, 3, 4], [5, 4, 3, 7]]],
    "plus_input": [[[], [1, 2]], [[1, 1, 2], [2, 2, 1]], [[9], [9]]],
    "atol": 0,
  },
  {
    "task_id": "Mbpp/3",
    "prompt": _MBPP_PROMPT.format(
      text="Write a python function to identify non-prime numbers.", test="assert is_not_prime(2) == False"
    ),
    "entry_point": "is_not_prime",
    "canonical_solution": (
      "\nimport math\ndef is_not_prime(n):\n    if n == 1:\n        return True\n"
      "    for i in range(2, int(math.sqrt(n))+1):\n        if n % i == 0:\n            return True\n    return False\n"
    ),
    "contract": "",
    "base_input": [[2], [10], [35], [37]],
    "plus_input": [[1], [4], [49], [97]],
    "atol": 0,
  },
  {
    "task_id": "Mbpp/17",
    "prompt": _MBPP_PROMPT.format(
      text="Write a function that returns the perimeter of a square given its side length as input.",
      test="assert square_perimeter(10)==40",
    ),
    "entry_point": "square_perimeter",
    "canonical_solution": "\ndef square_perimeter(a):\n  return 4*a\n",
    "contract": "",
    "base_input": [[10], [5], [4]],
    "plus_input": [[0.1], [2.5], [1e9]],
    "atol": 0,
  },
]

MBPP_SAMPLES = [
  # The same elements in another order pass: similar_elements is one of evalplus's set-equal tasks.
  ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b), reverse=True))\n", "pass", "pass"),
  ("Mbpp/2", "def similar_elements(a, b):\n    return tuple(x for x in a if x in b and x > 2)\n", "pass", "fail"),
  # A markdown answer: only the sanitizer finds the code in it.
  (
    "Mbpp/3",
    "Here is the function:\n```python\nimport math\n\ndef is_not_prime(n):\n    if n < 2:\n        return True\n"
    "    return any(n % d == 0 for d in range(2, math.isqrt(n) + 1))\n```\nIt checks every divisor.\n",
    "pass",
    "pass",
  ),
  ("Mbpp/3", "def is_not_prime(n):\n    return any(n % d == 0 for d in range(2, n // 2))\n", "pass", "fail"),
  ("Mbpp/17", "def square_perimeter(a):\n    return a * 4\n", "pass", "pass"),
  ("Mbpp/17", "def square_perimeter(a):\n    return int(4 * a)\n", "pass", "fail"),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
  path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
  return path
