"""Precision and recall of the decontamination methods on the labelled fixture (phi1_jax.decontam.fixture).

Every fixture document is scanned once with the index's reporting floors; the table then gives,
for each method alone, for the CLI's default rule (any method), and for other AST thresholds:
documents removed, precision (removed documents that are look-alikes), recall per kind of
look-alike, and how often the task named is the one copied.

    python benchmarks/decontam_quality.py --mbpp_path=../shared/data/mbpp/mbpp.jsonl [--fixture=FILE.jsonl]
"""

import argparse
import collections
import json
import time

from phi1_jax.decontam import benchmarks as bench_lib, fixture as fixture_lib, index as index_lib


def decide(scores: dict, rule: dict) -> tuple[str, str] | None:
  """(method, task) of the first method over its threshold in `rule`, or None."""
  for method, threshold in rule.items():
    s = scores.get(method, {})
    if not s:
      continue
    task = min(s, key=lambda k: (-s[k], k))
    if s[task] >= threshold:
      return method, task
  return None


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--mbpp_path", required=True)
  p.add_argument("--fixture", default=None, help="a fixture JSONL (default: built now, all problems, 2000 negatives)")
  p.add_argument("--negatives", type=int, default=2000)
  p.add_argument("--ast_min_nodes", type=int, default=None, help="default: the CLI's")
  args = p.parse_args()
  refs, _ = bench_lib.load(["humaneval", "mbpp"], args.mbpp_path)
  if args.fixture:
    docs = [json.loads(line) for line in open(args.fixture, encoding="utf-8")]
  else:
    docs = fixture_lib.build(refs, None, args.negatives)
  defaults = index_lib.Thresholds()
  if args.ast_min_nodes is not None:
    defaults = index_lib.Thresholds(ast_min_nodes=args.ast_min_nodes)
  index = index_lib.BenchmarkIndex(refs, defaults)
  start = time.perf_counter()
  scans = [index.scan(d["text"]).scores for d in docs]
  seconds = time.perf_counter() - start
  kinds = collections.Counter(d["meta"]["kind"] for d in docs)
  print(
    f"{len(docs)} documents {dict(kinds)} scanned in {seconds:.1f}s ({len(docs) / seconds:.1f} docs/s), "
    f"ast_min_nodes {defaults.ast_min_nodes}"
  )

  rules = {
    "exact alone": {"exact": 1},
    f"ngram alone ({defaults.ngram}-grams >= {defaults.ngram_min_hits})": {"ngram": defaults.ngram_min_hits},
    **{f"ast alone (tau {tau})": {"ast": tau} for tau in index_lib.TABLE_TAUS},
    f"defaults (exact, ngram, ast {defaults.ast_tau})": {
      "exact": 1,
      "ngram": defaults.ngram_min_hits,
      "ast": defaults.ast_tau,
    },
  }
  positive_kinds = [k for k in kinds if k != "stdlib"]
  head = (
    "| rule | removed | precision | "
    + " | ".join(f"recall {k}" for k in positive_kinds)
    + " | right task | negatives removed |"
  )
  print(head)
  print("|" + " --- |" * (head.count("|") - 1))
  for name, rule in rules.items():
    removed = tp = right = fp = 0
    hits = collections.Counter()
    for d, scores in zip(docs, scans):
      verdict = decide(scores, rule)
      if verdict is None:
        continue
      removed += 1
      expect = d["meta"]["expect"]
      if expect is None:
        fp += 1
        continue
      tp += 1
      hits[d["meta"]["kind"]] += 1
      right += (
        verdict[1] == expect
        or expect in scores.get(verdict[0], {})
        and scores[verdict[0]][expect] == scores[verdict[0]][verdict[1]]
      )
    precision = tp / removed if removed else float("nan")
    recalls = " | ".join(f"{hits[k] / kinds[k]:.3f} ({hits[k]}/{kinds[k]})" for k in positive_kinds)
    print(f"| {name} | {removed} | {precision:.3f} | {recalls} | {right}/{tp} | {fp}/{kinds['stdlib']} |")
  false = [
    (d["id"], decide(s, rules[list(rules)[-1]]))
    for d, s in zip(docs, scans)
    if d["meta"]["expect"] is None and decide(s, rules[list(rules)[-1]])
  ]
  missed = [d["id"] for d, s in zip(docs, scans) if d["meta"]["expect"] and not decide(s, rules[list(rules)[-1]])]
  print(f"false positives under the defaults: {false[:20]}")
  print(f"missed under the defaults ({len(missed)}): {missed[:40]}")


if __name__ == "__main__":
  main()
