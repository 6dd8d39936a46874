"""The benchmark index, built once, and the per-document scan: each method's scores on its own.

Methods (each scores a document against every benchmark problem; a document is removed when any
method crosses its threshold):

  exact   BigCode's exact substring: a benchmark string (docstring, description, solution) inside
          the document, both lowercased with whitespace runs collapsed to one space (as the
          StarCoder2 decontamination does; BigCode's first version only lowercased). Score 1.
          Aho-Corasick over all strings at once (`pyahocorasick`).
  ngram   word n-grams (n = 13 by default, as the paper and lm-evaluation-harness): words are runs of
          letters, digits and `_`, lowercased, so punctuation and layout do not matter. N-grams with
          fewer than two words that are not all digits are not indexed (runs of numbers such as
          `0 1 2 ... 12` were all the 13-gram hits on the stdlib). Score: the number of the
          problem's distinct n-grams found in the document.
  ast     AST match rate (see tree.py) between each function in the document and each benchmark
          solution function of >= `min_nodes` nodes. Score: the best rate.
  embed   L2 distance between unit-normalised embeddings of the document and of the problem
          (prompt + solution), when an embedder is given (see embedding.py). Score: the distance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import ahocorasick
import numpy as np

from phi1_jax.decontam import tree as tree_lib
from phi1_jax.decontam.benchmarks import Reference, solution_functions

METHODS = ("exact", "ngram", "ast", "embed")
TABLE_TAUS = (0.95, 0.9, 0.85, 0.8)  # the paper's Table 3
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
  return " ".join(text.lower().split())


def words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[str]:
  return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _has_words(gram: str) -> bool:
  return sum(not w.isdigit() for w in gram.split()) >= 2


@dataclass(frozen=True)
class Thresholds:
  """When a method's score removes a document."""

  ngram: int = 13  # n
  ngram_min_hits: int = 1  # shared n-grams with one problem
  ast_tau: float = 0.85  # match rate
  ast_min_nodes: int = 10  # smaller functions are not compared (one-liners match everything)
  exact_min_chars: int = 0  # shorter benchmark strings are not searched (BigCode: none)
  embed_max_l2: float | None = None  # None: embedding distances are reported, never used to remove


@dataclass
class Scan:
  """One document's scores: method -> {task_id: score} (problems with a hit; ast: rate >= the lowest tau;
  embed: every problem)."""

  scores: dict[str, dict[str, float]] = field(default_factory=dict)
  functions: int = 0


class BenchmarkIndex:
  """Everything the scan needs about the benchmarks, picklable (it travels to datatrove's workers)."""

  def __init__(self, refs: list[Reference], thresholds: Thresholds, reference_embeddings: np.ndarray | None = None):
    self.thresholds = t = thresholds
    self.task_ids = [r.task_id for r in refs]
    # exact: one automaton over every normalised string, each mapped to the problems it comes from
    self.automaton = ahocorasick.Automaton()
    owners: dict[str, list[str]] = {}
    for r in refs:
      for s in r.strings:
        key = normalise(s)
        if len(key) >= max(t.exact_min_chars, 1):
          owners.setdefault(key, [])
          if r.task_id not in owners[key]:
            owners[key].append(r.task_id)
    for key, tasks in owners.items():
      self.automaton.add_word(key, tuple(tasks))
    self.automaton.make_automaton()
    self.exact_strings = len(owners)
    # ngram: n-gram -> problems holding it
    grouped: dict[str, set[str]] = {}
    for r in refs:
      for g in ngrams(words(r.text), t.ngram):
        if _has_words(g):
          grouped.setdefault(g, set()).add(r.task_id)
    self.ngram_owners = {g: tuple(sorted(ts)) for g, ts in grouped.items()}
    # ast: every solution function of >= min_nodes nodes
    items = []
    for r in refs:
      for fn in solution_functions(r):
        tree = tree_lib.to_tree(fn)
        if tree_lib.size(tree) >= t.ast_min_nodes:
          items.append((r.task_id, tree))
    self.ast_tasks = sorted({task for task, _ in items})
    self.trees = tree_lib.TreeIndex(items, min_rate=min(TABLE_TAUS + (t.ast_tau,)))
    # embed: unit rows, one per problem, in task_ids order
    self.reference_embeddings = None
    if reference_embeddings is not None:
      self.reference_embeddings = unit_rows(reference_embeddings)

  def scan_exact(self, text: str) -> dict[str, float]:
    hits: dict[str, float] = {}
    for _, tasks in self.automaton.iter(normalise(text)):
      for task in tasks:
        hits[task] = 1.0
    return hits

  def scan_ngram(self, text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for g in ngrams(words(text), self.thresholds.ngram):
      for task in self.ngram_owners.get(g, ()):
        counts[task] = counts.get(task, 0) + 1
    return counts

  def scan(self, text: str, embedding: np.ndarray | None = None) -> Scan:
    fns = tree_lib.function_trees(text, self.thresholds.ast_min_nodes)
    result = Scan(functions=len(fns))
    result.scores["exact"] = self.scan_exact(text)
    result.scores["ngram"] = self.scan_ngram(text)
    result.scores["ast"] = self.trees.best_matches(fns) if fns else {}
    if embedding is not None and self.reference_embeddings is not None:
      distances = l2_distances(embedding[None], self.reference_embeddings)[0]
      result.scores["embed"] = {task: float(d) for task, d in zip(self.task_ids, distances)}
    return result

  def verdicts(self, scan: Scan) -> list[dict]:
    """The methods whose threshold the document crosses, each with its best problem and score, strongest first."""
    t, out = self.thresholds, []
    for method in METHODS:
      scores = scan.scores.get(method, {})
      if not scores:
        continue
      # the closest problem (ties: the first task id)
      if method == "embed":
        task = min(scores, key=lambda k: (scores[k], k))
      else:
        task = min(scores, key=lambda k: (-scores[k], k))
      score = scores[task]
      crossed = {
        "exact": True,
        "ngram": score >= t.ngram_min_hits,
        "ast": score >= t.ast_tau,
        "embed": t.embed_max_l2 is not None and score <= t.embed_max_l2,
      }[method]
      if crossed:
        out.append({"method": method, "task_id": task, "score": round(float(score), 4)})
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, dtype=np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def l2_distances(a_NxD: np.ndarray, b_MxD: np.ndarray) -> np.ndarray:
  """L2 distance between unit-normalised rows: sqrt(2 - 2 cos)."""
  cos_NxM = unit_rows(a_NxD) @ unit_rows(b_MxD).T
  return np.sqrt(np.maximum(2.0 - 2.0 * cos_NxM, 0.0))
