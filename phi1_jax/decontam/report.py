"""Merge the tasks' outputs into OUT/removed.jsonl, OUT/report.json and OUT/report.md (Table 3).

Table 3 of the paper splits HumanEval problems at each tau into "similar" (some training document
has a function whose AST match rate with the problem's solution is >= tau) and "non-similar", and
gives the pass@1 of each group. Here every benchmark in the run gets its rows; `--results` (the
eval's `samples.jsonl_results.jsonl`: task_id, passed per sample) adds pass@1 per group, the mean
over problems of the fraction of their samples that passed (the unbiased pass@1).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from phi1_jax.decontam.benchmarks import benchmark_of
from phi1_jax.decontam.index import METHODS, TABLE_TAUS


def merge_stats(work: Path, tasks: int) -> tuple[dict, dict]:
  """(summed counts, nearest) over the tasks' stats files."""
  counts: dict = {}
  nearest = {m: {} for m in METHODS}
  for rank in range(tasks):
    stats = json.loads((work / "stats" / f"{rank:05d}.json").read_text())
    for key, value in stats["counts"].items():
      if isinstance(value, dict):
        slot = counts.setdefault(key, {})
        for k, v in value.items():
          slot[k] = slot.get(k, 0) + v
      elif isinstance(value, list):
        counts.setdefault(key, []).extend(value)
      else:
        counts[key] = counts.get(key, 0) + value
    for method, per_task in stats["nearest"].items():
      for task, (score, doc) in per_task.items():
        cur = nearest[method].get(task)
        closer = cur is None or (score < cur[0] if method == "embed" else score > cur[0])
        if closer or (score == cur[0] and doc < cur[1]):
          nearest[method][task] = [score, doc]
  counts["bad_items"] = counts.get("bad_items", [])[:20]
  return counts, nearest


def write_removed(work: Path, tasks: int, out: Path) -> None:
  tmp = out / ".removed.jsonl.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for rank in range(tasks):
      with open(work / "removed" / f"{rank:05d}.jsonl", encoding="utf-8") as part:
        for line in part:
          f.write(line)
  os.replace(tmp, out / "removed.jsonl")


def read_results(path: str | Path) -> dict[str, float]:
  """Per task: fraction of its samples that passed, from an eval results file (or the eval's --out folder)."""
  path = Path(path)
  if path.is_dir():
    path = path / "samples.jsonl_results.jsonl"
  if not path.is_file():
    raise ValueError(f"--results={path}: file not found")
  passed: dict[str, list[bool]] = {}
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        passed.setdefault(str(row["task_id"]), []).append(bool(row["passed"]))
      except (ValueError, KeyError, TypeError):
        raise ValueError(f"--results={path}:{lineno}: not a results row with task_id and passed") from None
  if not passed:
    raise ValueError(f"--results={path}: no rows")
  return {task: sum(v) / len(v) for task, v in passed.items()}


def table3(
  task_ids_by_benchmark: dict[str, list[str]],
  ast_tasks: set[str],
  nearest_ast: dict,
  counts: dict,
  results: dict[str, float] | None,
) -> list[dict]:
  rows = []
  for benchmark, task_ids in task_ids_by_benchmark.items():
    for tau in TABLE_TAUS:
      similar = [t for t in task_ids if nearest_ast.get(t, [0.0])[0] >= tau]
      non_similar = [t for t in task_ids if t not in set(similar)]
      row = {
        "benchmark": benchmark,
        "tau": tau,
        "similar": len(similar),
        "non_similar": len(non_similar),
        "total": len(task_ids),
        "comparable": sum(t in ast_tasks for t in task_ids),
        "documents_at_tau": counts["ast_at_tau"].get(f"{benchmark}@{tau}", 0),
      }
      if results is not None:  # a run with --limit scores only some problems: say how many
        row["evaluated"] = sum(t in results for t in task_ids)
        for name, group in (("similar", similar), ("non_similar", non_similar)):
          scored = [results[t] for t in group if t in results]
          row[f"pass@1_{name}"] = round(100 * sum(scored) / len(scored), 1) if scored else None
          row[f"scored_{name}"] = len(scored)
      rows.append(row)
  return rows


def build(out: Path, tasks: int, index, benchmarks: dict, flags: dict, results_path: str | None) -> dict:
  work = out / "work"
  counts, nearest = merge_stats(work, tasks)
  write_removed(work, tasks, out)
  results = read_results(results_path) if results_path else None
  by_benchmark: dict[str, list[str]] = {}
  for task in index.task_ids:
    by_benchmark.setdefault(benchmark_of(task), []).append(task)
  problems = {}
  for task in index.task_ids:
    entry = {}
    for method in METHODS:
      hit = nearest[method].get(task)
      entry[method] = None if hit is None else {"score": round(hit[0], 4), "id": hit[1]}
    problems[task] = entry
  report = {
    "benchmarks": benchmarks,
    "flags": flags,
    "counts": counts,
    "table3": table3(by_benchmark, set(index.ast_tasks), nearest["ast"], counts, results),
    "results": str(results_path) if results_path else None,
    "problems": problems,
  }
  tmp = out / ".report.json.tmp"
  tmp.write_text(json.dumps(report, indent=1) + "\n")
  os.replace(tmp, out / "report.json")
  tmp = out / ".report.md.tmp"
  tmp.write_text(markdown(report))
  os.replace(tmp, out / "report.md")
  return report


def markdown(report: dict) -> str:
  c, f = report["counts"], report["flags"]
  lines = [
    "# Decontamination report",
    "",
    f"{c['documents']} documents scanned, {c['kept']} kept, {c['removed']} removed, {c['bad']} bad lines "
    f"skipped. Thresholds: exact substring (any), {f['ngram']}-grams >= {f['ngram_min_hits']} shared, "
    f"AST match rate >= {f['ast_tau']} (functions of >= {f['ast_min_nodes']} nodes), embedding L2 "
    f"{'<= ' + str(f['embed_max_l2']) if f.get('embed_max_l2') is not None else 'reported only'}"
    f"{'' if f.get('embed_checkpoint') else ' (no embedder given)'}.",
    "",
    "| method | documents over its threshold | removed with it as the first reason | problems with any match |",
    "| --- | --- | --- | --- |",
  ]
  for m in METHODS:
    matched = sum(
      1 for p in report["problems"].values() if p[m] is not None and (m != "ast" or p[m]["score"] >= f["ast_tau"])
    )
    lines.append(f"| {m} | {c['flagged_by'][m]} | {c['removed_by'][m]} | {matched} |")
  pairs = c.get("ast_pairs", {})
  lines += [
    "",
    f"AST comparisons: {pairs.get('all', 0)} function pairs, {pairs.get('in_size_band', 0)} within the "
    f"size band, {pairs.get('tree_edit_distances', 0)} tree edit distances computed.",
    "",
    "## Table 3: problems similar to the training data by AST match rate",
    "",
  ]
  with_results = report["results"] is not None
  head = "| benchmark | tau | similar | non-similar | total | documents with a match >= tau |"
  if with_results:
    head += " pass@1 similar (%) | pass@1 non-similar (%) |"
  lines += [head, "|" + " --- |" * (head.count("|") - 1)]
  for r in report["table3"]:
    line = f"| {r['benchmark']} | {r['tau']} | {r['similar']} | {r['non_similar']} | {r['total']} | {r['documents_at_tau']} |"
    if with_results:
      fmt = lambda name: (
        f"{'-' if r['pass@1_' + name] is None else r['pass@1_' + name]} ({r['scored_' + name]} of {r[name]} evaluated)"
      )
      line += f" {fmt('similar')} | {fmt('non_similar')} |"
    lines.append(line)
  per_benchmark = {r["benchmark"]: r for r in report["table3"]}
  lines += [
    "",
    "Problems whose solution has no function of the minimum size are never similar by AST: "
    + ", ".join(f"{b}: {r['total'] - r['comparable']} of {r['total']}" for b, r in per_benchmark.items())
    + ".",
    "",
    f"Results file: {report['results'] or 'none (give --results=FILE_results.jsonl for pass@1 per group)'}"
    + (
      " ("
      + "; ".join(f"{b}: {r['evaluated']} of {r['total']} problems evaluated" for b, r in per_benchmark.items())
      + ")"
      if with_results
      else ""
    )
    + ".",
    "",
    "## Nearest training document per problem (problems with any match)",
    "",
    "| problem | exact | ngram (shared n-grams) | ast (rate) | embed (L2) |",
    "| --- | --- | --- | --- | --- |",
  ]
  for task, p in report["problems"].items():
    if all(p[m] is None for m in METHODS):
      continue
    cells = ["-" if p[m] is None else f"{p[m]['id']} ({p[m]['score']})" for m in METHODS]
    lines.append(f"| {task} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
