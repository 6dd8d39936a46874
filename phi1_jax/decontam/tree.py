"""Python functions as normalised syntax trees, and their AST match rate.

A function's tree drops what a copy can change without changing the program: its docstring, type
annotations, the names of its own variables, arguments and of the function itself (all become
`_`; builtins such as `len` keep their names), formatting and comments (the parser drops those),
and the order of adjacent statements that do not touch each other's names (they are sorted).
Attribute names, keyword-argument names, operators and constants stay.

Match rate (the paper's): 1 - TED(a, b) / max(|a|, |b|), TED the unit-cost tree edit distance
(insert, delete, relabel: 1 each) computed by Zhang & Shasha's algorithm in the `edist` package's
Cython `standard_ted` (0.2 ms for two 40-node trees here; the pure-Python `apted` gives the same
distances 240x slower, tests/test_decontam.py checks they agree). TED is still quadratic or worse in
the tree sizes, so `TreeIndex` computes it only for pairs that can reach the threshold, by two
exact bounds: TED >= ||a| - |b|| (a size
band over the sorted benchmark trees) and TED >= the string edit distance of the two preorder
label sequences (Guha et al., 2002; rapidfuzz computes it in C++).
"""

from __future__ import annotations

import ast
import builtins
import bisect
import heapq
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from edist.ted import standard_ted
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

BUILTIN_NAMES = frozenset(dir(builtins))
_SKIP_FIELDS = {"ctx", "type_comment", "type_ignores", "annotation", "returns", "kind"}
_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers")
_REORDERABLE = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Import, ast.ImportFrom)
_UNKNOWN_CHAR = "\x00"  # a doc label the benchmark trees never have: never equal to one of theirs


@dataclass
class Node:
  name: str
  children: list["Node"] = field(default_factory=list)


def _label(node: ast.AST) -> str:
  kind = type(node).__name__
  if isinstance(node, ast.Name):
    return f"Name:{node.id}" if node.id in BUILTIN_NAMES else "Name:_"
  if isinstance(node, ast.Attribute):
    return f"Attribute:{node.attr}"
  if isinstance(node, ast.Constant):
    return f"Constant:{node.value!r}"[:40]
  if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.AugAssign)):
    return f"{kind}:{type(node.op).__name__}"
  if isinstance(node, ast.Compare):
    return "Compare:" + ",".join(type(op).__name__ for op in node.ops)
  if isinstance(node, ast.keyword):
    return f"keyword:{node.arg}"
  if isinstance(node, ast.alias):
    return f"alias:{node.name}"
  return kind


def _is_docstring(stmt: ast.stmt) -> bool:
  return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def names_written_and_read(stmt: ast.AST) -> tuple[set, set]:
  """(names written, names read) by a statement; the base name of an assigned attribute or item, or of a
  called method, counts as written."""
  written, read = set(), set()
  for node in ast.walk(stmt):
    if isinstance(node, ast.Name):
      (written if isinstance(node.ctx, (ast.Store, ast.Del)) else read).add(node.id)
    elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, (ast.Store, ast.Del)):
      base = node.value
      while isinstance(base, (ast.Attribute, ast.Subscript)):
        base = base.value
      if isinstance(base, ast.Name):
        written.add(base.id)
    elif isinstance(node, ast.alias):
      written.add((node.asname or node.name).split(".")[0])
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
      base = node.func.value  # a method may change its object: x.append(1) writes x
      while isinstance(base, (ast.Attribute, ast.Subscript, ast.Call)):
        base = base.func if isinstance(base, ast.Call) else base.value
      if isinstance(base, ast.Name):
        written.add(base.id)
  if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name):
    read.add(stmt.target.id)
  return written, read


def _dependent(a: tuple[set, set], b: tuple[set, set]) -> bool:
  return bool(a[0] & (b[0] | b[1]) or b[0] & a[1])


def _canonical_run(stmts: list[ast.stmt], trees: list[Node]) -> list[Node]:
  """The smallest order (by serialised tree) that keeps every pair of dependent statements in place.

  Dependent pairs fix a partial order and swapping independent statements does not change it, so
  every such reordering of a run gives the same result (Kahn's algorithm with a heap).
  """
  names = [names_written_and_read(s) for s in stmts]
  keys = [serialise(t) for t in trees]
  after = [[j for j in range(i + 1, len(stmts)) if _dependent(names[i], names[j])] for i in range(len(stmts))]
  waiting = [0] * len(stmts)
  for successors in after:
    for j in successors:
      waiting[j] += 1
  ready = [(keys[i], i) for i in range(len(stmts)) if waiting[i] == 0]
  heapq.heapify(ready)
  out = []
  while ready:
    _, i = heapq.heappop(ready)
    out.append(trees[i])
    for j in after[i]:
      waiting[j] -= 1
      if waiting[j] == 0:
        heapq.heappush(ready, (keys[j], j))
  return out


def _canonical_order(stmts: list[ast.stmt], trees: list[Node]) -> list[Node]:
  """Each run of adjacent simple statements (assignments, expressions, imports) in canonical order."""
  out, run_stmts, run_trees = [], [], []
  for stmt, tree in zip(stmts + [None], trees + [None]):
    if stmt is not None and isinstance(stmt, _REORDERABLE):
      run_stmts.append(stmt)
      run_trees.append(tree)
      continue
    if run_stmts:
      out.extend(_canonical_run(run_stmts, run_trees) if len(run_stmts) > 1 else run_trees)
      run_stmts, run_trees = [], []
    if stmt is not None:
      out.append(tree)
  return out


def to_tree(node: ast.AST) -> Node:
  """The normalised tree of an ast node (see the module docstring)."""
  children = []
  for name, value in ast.iter_fields(node):
    if name in _SKIP_FIELDS or isinstance(value, (ast.expr_context, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)):
      continue
    if isinstance(value, ast.AST):
      children.append(to_tree(value))
    elif isinstance(value, list):
      items = [v for v in value if isinstance(v, ast.AST) and not isinstance(v, ast.cmpop)]
      if (
        name == "body"
        and items
        and _is_docstring(items[0])
        and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module))
      ):
        items = items[1:]
      subtrees = [to_tree(v) for v in items]
      if name in _STATEMENT_LISTS and items and isinstance(items[0], ast.stmt):
        subtrees = _canonical_order(items, subtrees)
      children.extend(subtrees)
  return Node(_label(node), children)


def size(tree: Node) -> int:
  return 1 + sum(size(c) for c in tree.children)


def serialise(tree: Node) -> str:
  if not tree.children:
    return tree.name
  return f"{tree.name}({','.join(serialise(c) for c in tree.children)})"


def flatten(tree: Node) -> tuple[list[str], list[list[int]]]:
  """Preorder labels and children indices: edist's tree format."""
  labels, adjacency, stack = [], [], [(tree, -1)]
  while stack:
    node, parent = stack.pop()
    if parent >= 0:
      adjacency[parent].append(len(labels))
    labels.append(node.name)
    adjacency.append([])
    index = len(labels) - 1
    stack.extend((child, index) for child in reversed(node.children))
  return labels, adjacency


def tree_edit_distance(a: Node, b: Node) -> int:
  return int(standard_ted(*flatten(a), *flatten(b)))


def match_rate(a: Node, b: Node) -> float:
  """1 - TED / max size, unit costs."""
  return flat_match_rate(flatten(a), flatten(b))


def flat_match_rate(flat_a, flat_b) -> float:
  """match_rate of two trees already flattened (flatten), for callers that compare one tree with many."""
  distance = int(standard_ted(flat_a[0], flat_a[1], flat_b[0], flat_b[1]))
  return max(0.0, 1.0 - distance / max(len(flat_a[0]), len(flat_b[0])))


# ---------------------------------------------------------------- finding functions in documents

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S)
_DEF_LINE = re.compile(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(")


def _def_blocks(text: str) -> list[str]:
  """Each `def` line with the lines indented under it, dedented: code inside prose that does not parse whole."""
  lines = text.splitlines()
  blocks = []
  i = 0
  while i < len(lines):
    m = _DEF_LINE.match(lines[i])
    if not m:
      i += 1
      continue
    indent = len(m.group(1).expandtabs())
    j = i + 1
    while j < len(lines) and (
      not lines[j].strip()
      or len(lines[j]) - len(lines[j].lstrip()) > indent
      or lines[j].lstrip().startswith((")", "]", "}"))
    ):
      j += 1
    blocks.append("\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[i:j]))
    i = j
  return blocks


def parse_quietly(source: str) -> ast.AST | None:
  try:
    with warnings.catch_warnings():  # training text is full of invalid escapes; not our warnings to show
      warnings.simplefilter("ignore")
      return ast.parse(source)
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None


def function_trees(text: str, min_nodes: int) -> list[Node]:
  """Normalised trees of every function in `text` (Python source, or prose with code in it) of >= min_nodes."""
  module = parse_quietly(text)
  modules = [module] if module is not None else []
  if module is None:
    sources = _FENCE.findall(text) + _def_blocks(text)
    modules = [m for m in map(parse_quietly, sources) if m is not None]
  trees, seen = [], set()
  for module in modules:
    for node in ast.walk(module):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        try:
          tree = to_tree(node)
        except RecursionError:
          continue
        key = serialise(tree)
        if key not in seen and size(tree) >= min_nodes:
          seen.add(key)
          trees.append(tree)
  return trees


# ---------------------------------------------------------------- benchmark index


class TreeIndex:
  """Benchmark function trees, sorted by size, with their preorder label strings for the prefilter."""

  def __init__(self, items: list[tuple[str, Node]], min_rate: float):
    """items: (task_id, tree); min_rate: the lowest rate any caller asks about (pairs below are not computed)."""
    self.min_rate = min_rate
    vocab: dict[str, str] = {}
    entries = []
    for task_id, tree in items:
      flat = flatten(tree)
      chars = "".join(vocab.setdefault(label, chr(0x100 + len(vocab))) for label in flat[0])
      entries.append((len(flat[0]), task_id, flat, chars))
    entries.sort(key=lambda e: e[0])
    self.vocab = vocab
    self.sizes = [e[0] for e in entries]
    self.task_ids = [e[1] for e in entries]
    self.trees = [e[2] for e in entries]  # flattened
    self.strings = [e[3] for e in entries]
    self.pairs = self.in_band = self.computed = 0  # counters: all pairs, pairs in the size band, TED runs

  def encode(self, labels: list[str]) -> str:
    return "".join(self.vocab.get(label, _UNKNOWN_CHAR) for label in labels)

  def best_matches(self, trees: list[Node]) -> dict[str, float]:
    """For each task some tree reaches min_rate with: its best rate over `trees`."""
    best: dict[str, float] = {}
    for tree in trees:
      flat = flatten(tree)
      chars = self.encode(flat[0])
      n = len(chars)
      self.pairs += len(self.sizes)
      # rate <= min/max size: only benchmark trees within the size band can reach min_rate
      lo = bisect.bisect_left(self.sizes, int(np.ceil(n * self.min_rate - 1e-9)))
      hi = bisect.bisect_right(self.sizes, int(np.floor(n / self.min_rate + 1e-9)))
      if lo >= hi:
        continue
      bounds = cdist(
        [chars],
        self.strings[lo:hi],
        scorer=Levenshtein.normalized_similarity,
        score_cutoff=self.min_rate,
        dtype=np.float32,
      )[0]
      candidates = np.nonzero(bounds >= self.min_rate)[0]
      self.in_band += hi - lo
      for k in candidates[np.argsort(-bounds[candidates], kind="stable")]:
        i = lo + int(k)
        task_id = self.task_ids[i]
        if best.get(task_id, -1.0) >= bounds[k]:
          continue  # this task already has a rate this pair cannot beat
        self.computed += 1
        rate = flat_match_rate(flat, self.trees[i])
        if rate >= self.min_rate and rate > best.get(task_id, -1.0):
          best[task_id] = float(rate)
    return best
