"""A labelled set for decontamination: benchmark look-alikes (positives) and ordinary code (negatives).

  python -m phi1_jax.decontam.fixture --out=FILE.jsonl [--mbpp_path=FILE] [--per_benchmark=N] [--negatives=N]
      [--stdlib_corpus=FILE.jsonl]

Positives, each with `meta.expect` = the benchmark task it copies and `meta.kind`:
  renamed    the solution function without its docstring, every name it defines renamed, re-printed
             by `ast.unparse` and re-indented to 2 spaces (nothing of the original layout is left);
  reordered  the renamed copy with two adjacent statements that touch none of each other's names swapped;
  edited     the renamed copy with one statement added at the top of its body (a print: 4 tree nodes),
             a near copy whose match rate falls below 1 (by 4 / (size + 4));
  prompt     the prompt (HumanEval) or the description with its first test (MBPP), verbatim, inside
             paragraphs of prose.
Negatives (`meta.expect` null, `meta.kind` "stdlib"): functions of the interpreter's standard library
that share the most words with some benchmark problem (ordinary code with the same vocabulary).
`--stdlib_corpus` also writes the stdlib corpus the trainer's demo uses (one document per file), the
ordinary training data to run the fixture with.
"""

from __future__ import annotations

import ast
import builtins
import json
import random
import re
import sys
from pathlib import Path

from phi1_jax.cli import OneLineParser, report_error
from phi1_jax.decontam import benchmarks as bench_lib
from phi1_jax.decontam.tree import names_written_and_read, parse_quietly

_PROSE_BEFORE = (
  "Working through small problems is the fastest way to learn a language. The exercise below "
  "comes from a collection we use in the second week of the course; read it twice before "
  "writing any code, and think about the edge cases first.\n\n"
)
_PROSE_AFTER = (
  "\n\nWhen you have an answer, test it on the examples, then on inputs you make up yourself: an "
  "empty list, a single element, negative numbers. Compare your solution with a classmate's and "
  "discuss which one is easier to read.\n"
)
_WORD = re.compile(r"[A-Za-z_]\w+")
_ASSIGNMENTS = (ast.Assign, ast.AugAssign, ast.AnnAssign)  # swapped only when they touch none of each other's names


def _defined_names(fn: ast.AST) -> set[str]:
  names = set()
  for node in ast.walk(fn):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      names.add(node.name)
    elif isinstance(node, ast.arg):
      names.add(node.arg)
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      names.add(node.id)
  return {n for n in names if n not in dir(builtins)}


class _Rename(ast.NodeTransformer):
  def __init__(self, mapping):
    self.mapping = mapping

  def visit_Name(self, node):
    node.id = self.mapping.get(node.id, node.id)
    return node

  def visit_arg(self, node):
    node.arg = self.mapping.get(node.arg, node.arg)
    node.annotation = None
    return node

  def visit_FunctionDef(self, node):
    node.name = self.mapping.get(node.name, node.name)
    node.returns = None
    body = node.body
    if (
      body
      and isinstance(body[0], ast.Expr)
      and isinstance(body[0].value, ast.Constant)
      and isinstance(body[0].value.value, str)
    ):
      node.body = body[1:] or [ast.Pass()]
    self.generic_visit(node)
    return node


def _reindent(source: str) -> str:
  """4-space indentation to 2, as a copy pasted into another code base might be."""
  out = []
  for line in source.splitlines():
    stripped = line.lstrip(" ")
    out.append(" " * ((len(line) - len(stripped)) // 2) + stripped)
  return "\n".join(out) + "\n"


def renamed_copy(code: str, functions: tuple[str, ...], rng: random.Random) -> tuple[str, ast.Module]:
  module = parse_quietly(code)
  keep = [
    n
    for n in module.body
    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and (not functions or n.name in functions)
  ]
  module = ast.Module(body=keep, type_ignores=[])
  names = sorted(set().union(*(_defined_names(n) for n in keep)) if keep else set())
  fresh = [f"{rng.choice(['val', 'item', 'tmp', 'acc', 'arg', 'res', 'k', 'p'])}_{i}" for i in range(len(names))]
  mapping = dict(zip(names, fresh))
  for name, new in mapping.items():
    if name in {n.name for n in keep}:
      mapping[name] = f"solve_{new}"
  module = _Rename(mapping).visit(module)
  ast.fix_missing_locations(module)
  return _reindent(ast.unparse(module)), module


def _swap_independent(module: ast.Module) -> bool:
  """Swaps the first adjacent pair of independent simple statements; False if there is none."""
  for node in ast.walk(module):
    for field in ("body", "orelse"):
      stmts = getattr(node, field, None)
      if not isinstance(stmts, list):
        continue
      for i in range(len(stmts) - 1):
        a, b = stmts[i], stmts[i + 1]
        if not (isinstance(a, _ASSIGNMENTS) and isinstance(b, _ASSIGNMENTS)):
          continue
        (wa, ra), (wb, rb) = names_written_and_read(a), names_written_and_read(b)
        if not (wa & (wb | rb)) and not (wb & ra) and ast.dump(a) != ast.dump(b):
          stmts[i], stmts[i + 1] = b, a
          return True
  return False


def positives(refs: list[bench_lib.Reference], seed: int = 0) -> list[dict]:
  rng = random.Random(seed)
  docs = []
  for ref in refs:
    text, module = renamed_copy(ref.code, ref.functions, rng)
    if module.body:
      docs.append(
        {
          "id": f"renamed/{ref.task_id}",
          "text": text,
          "source": "fixture",
          "meta": {"expect": ref.task_id, "kind": "renamed"},
        }
      )
      edited = ast.parse(text)
      fn = edited.body[-1]
      fn.body.insert(0, ast.Expr(ast.Call(ast.Name("print", ast.Load()), [ast.Constant("solving")], [])))
      docs.append(
        {
          "id": f"edited/{ref.task_id}",
          "text": _reindent(ast.unparse(ast.fix_missing_locations(edited))),
          "source": "fixture",
          "meta": {"expect": ref.task_id, "kind": "edited"},
        }
      )
      if _swap_independent(module):
        docs.append(
          {
            "id": f"reordered/{ref.task_id}",
            "text": _reindent(ast.unparse(module)),
            "source": "fixture",
            "meta": {"expect": ref.task_id, "kind": "reordered"},
          }
        )
    docs.append(
      {
        "id": f"prompt/{ref.task_id}",
        "text": _PROSE_BEFORE + ref.prompt + _PROSE_AFTER,
        "source": "fixture",
        "meta": {"expect": ref.task_id, "kind": "prompt"},
      }
    )
  return docs


def stdlib_functions(max_bytes: int) -> list[tuple[str, str]]:
  """(id, source) of every function and method of 4 to 61 lines in the stdlib corpus's .py files."""
  from phi1_jax.data.stdlib_corpus import stdlib_dir, stdlib_files

  root, out = stdlib_dir(), []
  for f in stdlib_files(max_bytes):
    text = f.read_text(encoding="utf-8")
    module = parse_quietly(text)
    if module is None:
      continue
    lines = text.splitlines()
    for node in ast.walk(module):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and 4 <= node.end_lineno - node.lineno + 1 <= 61:
        first = lines[node.lineno - 1]
        indent = len(first) - len(first.lstrip())
        source = "\n".join(line[indent:] for line in lines[node.lineno - 1 : node.end_lineno]) + "\n"
        out.append((f"stdlib/{f.relative_to(root).as_posix()}:{node.lineno}:{node.name}", source))
  return out


def negatives(refs: list[bench_lib.Reference], n: int, max_bytes: int = 8_000_000) -> list[dict]:
  """The n stdlib functions sharing the most distinct words (identifiers, keywords aside) with one problem."""
  import collections
  import keyword

  stop = set(keyword.kwlist) | {"self", "cls"}
  holders = collections.defaultdict(list)  # word -> problems using it
  for r in refs:
    for w in {w.lower() for w in _WORD.findall(r.text)} - stop:
      holders[w].append(r.task_id)
  scored = []
  for fid, source in stdlib_functions(max_bytes):
    shared = collections.Counter(
      t for w in {w.lower() for w in _WORD.findall(source)} - stop for t in holders.get(w, ())
    )
    if shared:
      task, best = min(shared.items(), key=lambda kv: (-kv[1], kv[0]))
      scored.append((best, fid, source, task))
  scored.sort(key=lambda s: (-s[0], s[1]))
  return [
    {
      "id": fid,
      "text": source,
      "source": "fixture",
      "meta": {"expect": None, "kind": "stdlib", "shared_words": best, "closest_vocabulary": task},
    }
    for best, fid, source, task in scored[:n]
  ]


def build(
  refs: list[bench_lib.Reference],
  per_benchmark: int | None,
  n_negatives: int,
  seed: int = 0,
  stdlib_bytes: int = 8_000_000,
) -> list[dict]:
  chosen = []
  for name in bench_lib.BENCHMARKS:
    group = [r for r in refs if r.benchmark == name]
    if per_benchmark is not None and per_benchmark < len(group):
      group = sorted(random.Random(seed).sample(group, per_benchmark), key=refs.index)
    chosen.extend(group)
  return positives(chosen, seed) + negatives(refs, n_negatives, stdlib_bytes)


def main(argv=None) -> int:
  prog = "python -m phi1_jax.decontam.fixture"
  p = OneLineParser(prog=prog, description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--benchmarks", default="humaneval,mbpp")
  p.add_argument("--mbpp_path", default=None)
  p.add_argument("--per_benchmark", type=int, default=None, help="problems drawn per benchmark (default: all)")
  p.add_argument("--negatives", type=int, default=2000)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--stdlib_bytes", type=int, default=8_000_000, help="stdlib corpus size the negatives come from")
  p.add_argument("--stdlib_corpus", default=None, help="also write the stdlib corpus (JSONL, a document per file)")
  args = p.parse_args(argv)
  try:
    refs, _ = bench_lib.load([b for b in args.benchmarks.split(",") if b], args.mbpp_path)
  except ValueError as e:  # an unknown benchmark, an unreadable MBPP file
    return report_error(prog, e)
  docs = build(refs, args.per_benchmark, args.negatives, args.seed, args.stdlib_bytes)
  Path(args.out).write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
  kinds = {}
  for d in docs:
    kinds[d["meta"]["kind"]] = kinds.get(d["meta"]["kind"], 0) + 1
  print(f"{args.out}: {len(docs)} documents {kinds}")
  if args.stdlib_corpus:
    from phi1_jax.data import stdlib_corpus

    files = stdlib_corpus.stdlib_files(args.stdlib_bytes)
    stdlib_corpus.write_corpus(files, Path(args.stdlib_corpus))
    print(f"{args.stdlib_corpus}: {len(files)} stdlib files")
  return 0


if __name__ == "__main__":
  sys.exit(main())
