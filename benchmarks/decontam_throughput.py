"""Decontamination speed: documents/s per method, and how the cost grows with documents and problems.

Scans stdlib corpus files (whole files: the ordinary training data) and fixture look-alikes
(benchmark-sized functions) in-process, one core, against HumanEval + MBPP:
  1. seconds per method (exact, ngram, ast) and documents/s for the whole scan;
  2. documents x1, x2, x4: time should grow linearly;
  3. benchmark problems 1/8 .. all: the AST comparison's function pairs grow with the product, but
     only pairs in the size band reach the string bound and only pairs passing it reach the tree
     edit distance; the counts and seconds show it is not all-pairs;
  4. the same functions against all benchmark trees with the tree edit distance on every pair
     (what the prefilter saves), on a sample, as a ratio.

    python benchmarks/decontam_throughput.py --mbpp_path=../shared/data/mbpp/mbpp.jsonl [--docs=200]
"""

import argparse
import random
import time

from phi1_jax.data.stdlib_corpus import stdlib_files
from phi1_jax.decontam import benchmarks as bench_lib, fixture as fixture_lib, index as index_lib
from phi1_jax.decontam import tree as tree_lib


def scan_all(index, texts):
  """Seconds per method over texts (the same work as index.scan, timed by part)."""
  t = {"exact": 0.0, "ngram": 0.0, "ast_parse": 0.0, "ast_match": 0.0}
  for text in texts:
    s = time.perf_counter()
    index.scan_exact(text)
    t["exact"] += time.perf_counter() - s
    s = time.perf_counter()
    index.scan_ngram(text)
    t["ngram"] += time.perf_counter() - s
    s = time.perf_counter()
    fns = tree_lib.function_trees(text, index.thresholds.ast_min_nodes)
    t["ast_parse"] += time.perf_counter() - s
    s = time.perf_counter()
    index.trees.best_matches(fns)
    t["ast_match"] += time.perf_counter() - s
  return t


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--mbpp_path", required=True)
  p.add_argument("--docs", type=int, default=200, help="documents in the base set (half files, half look-alikes)")
  args = p.parse_args()
  refs, _ = bench_lib.load(["humaneval", "mbpp"], args.mbpp_path)
  rng = random.Random(0)
  files = [f.read_text(encoding="utf-8") for f in stdlib_files()]
  rng.shuffle(files)
  lookalikes = [d["text"] for d in fixture_lib.positives(refs) if d["meta"]["kind"] != "prompt"]
  rng.shuffle(lookalikes)
  half = args.docs // 2
  base = files[:half] + lookalikes[:half]
  mb = sum(len(t) for t in base) / 1e6

  index = index_lib.BenchmarkIndex(refs, index_lib.Thresholds())
  start = time.perf_counter()
  t = scan_all(index, base)
  total = time.perf_counter() - start
  print(
    f"1. {len(base)} documents ({half} stdlib files, {half} look-alikes, {mb:.1f} MB) x {len(refs)} problems: "
    f"{total:.2f}s, {len(base) / total:.1f} docs/s, {mb / total:.2f} MB/s"
  )
  print("   seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))

  print("2. documents      MB  seconds  docs/s  MB/s")
  for mult in (1, 2, 4):
    texts = files[: half * mult] + lookalikes[: half * mult]
    index = index_lib.BenchmarkIndex(refs, index_lib.Thresholds())
    start = time.perf_counter()
    scan_all(index, texts)
    s = time.perf_counter() - start
    size = sum(len(x) for x in texts) / 1e6
    print(f"   {len(texts):>9}  {size:6.1f}  {s:7.2f}  {len(texts) / s:6.1f}  {size / s:4.2f}")

  print("3. problems  function pairs  in size band  tree edit distances  ast seconds")
  for frac in (8, 4, 2, 1):
    subset = refs[::frac]
    index = index_lib.BenchmarkIndex(subset, index_lib.Thresholds())
    t = scan_all(index, base)
    tr = index.trees
    print(f"   {len(subset):>8}  {tr.pairs:>14}  {tr.in_band:>12}  {tr.computed:>19}  {t['ast_match']:11.2f}")

  index = index_lib.BenchmarkIndex(refs, index_lib.Thresholds())
  sample = [f for text in base[:40] for f in tree_lib.function_trees(text, index.thresholds.ast_min_nodes)][:60]
  start = time.perf_counter()
  for fn in sample:
    flat = tree_lib.flatten(fn)
    for other in index.trees.trees:
      tree_lib.flat_match_rate(flat, other)
  naive = time.perf_counter() - start
  start = time.perf_counter()
  index.trees.best_matches(sample)
  filtered = time.perf_counter() - start
  print(
    f"4. {len(sample)} functions x {len(index.trees.trees)} benchmark trees: every pair's tree edit distance "
    f"{naive:.2f}s, with the bounds {filtered:.3f}s: {naive / filtered:.0f}x"
  )


if __name__ == "__main__":
  main()
