"""Gathers a recipe run's numbers from its steps' provenance records into the report's results.

Reads ROOT/recipes/<name>.json (which folder holds each step) and each folder's provenance.json
(status, wall time, the stage's counts from `phi1_jax.recipe.outcomes`). Per variant and seed:
the pretraining tokens seen, the epochs of each source (tokens seen x its mixture weight / the
source's packed training tokens: a smaller filtered set repeats), HumanEval pass@1 and the
canonical-solution loss before and after finetuning, the eval loss, MBPP pass@1 when run.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from phi1_jax.recipe import graph as graph_lib
from phi1_jax.recipe import report as report_lib
from phi1_jax.recipe import run as run_lib

LOWER_IS_BETTER = ["canonical loss base", "canonical loss finetuned", "eval loss base", "eval loss finetuned"]
# metric name in the report -> (the step's role, the key of its counts)
METRICS = {
  "pass@1 base": ("eval base", "pass@1"),
  "pass@1 finetuned": ("eval finetuned", "pass@1"),
  "canonical loss base": ("eval base", "canonical_loss"),
  "canonical loss finetuned": ("eval finetuned", "canonical_loss"),
  "eval loss base": ("pretrain", "final_eval_loss"),
  "eval loss finetuned": ("finetune", "final_eval_loss"),
  "mbpp pass@1 base": ("mbpp base", "pass@1"),
  "mbpp pass@1 finetuned": ("mbpp finetuned", "pass@1"),
}


# the counts the steps table shows per command (provenance.json keeps them all)
HEADLINE = {
  "data.tokenizer train": ("vocab_size", "sentences_used"),
  "data.pack": ("documents", "records_train", "tokens"),
  "curate annotate": ("annotated", "unparseable"),
  "curate embed": ("documents", "dim"),
  "curate train-classifier": ("precision", "recall", "roc_auc"),
  "curate filter": ("documents_read", "documents_kept", "tokens_kept"),
  "synth textbooks": ("written", "answers_received", "rejected"),
  "synth exercises": ("written", "answers_received", "rejected"),
  "decontam": ("documents_read", "documents_kept", "documents_removed"),
  "train": ("final_step", "final_loss", "final_eval_loss"),
  "eval": ("pass@1", "canonical_loss", "problems"),
}


def _mixture(identity: dict) -> list[tuple[str, float]]:
  """(producing step's hash, weight) of each source of a train step's data.mixture."""
  value = identity["args"].get("config.data.mixture")
  if not isinstance(value, dict) or "mixture" not in value:
    return []
  return [(ref["output_of"], weight) for ref, weight in value["mixture"]]


def _table3_rows(decontam_out: Path, variant: str) -> dict[str, str]:
  """The paper's Table 3 from a decontam run with --results: per benchmark and tau, the similar and
  non-similar problems and the finetuned model's pass@1 (%) on each group."""
  try:
    rows = json.loads((decontam_out / "report.json").read_text())["table3"]
  except (OSError, ValueError, KeyError):
    return {}
  table = {}
  for r in rows:
    similar, non_similar = r.get("pass@1_similar"), r.get("pass@1_non_similar")
    table[f"{variant}, {r['benchmark']} tau {r['tau']}"] = (
      f"{r['similar']} similar (pass@1 {'-' if similar is None else similar}%), "
      f"{r['non_similar']} non-similar (pass@1 {'-' if non_similar is None else non_similar}%)"
    )
  return table


def gather(root: Path, recipe_name: str) -> dict:
  index = run_lib.read_index(root, recipe_name)
  if index is None:
    raise FileNotFoundError(f"{run_lib.index_path(root, recipe_name)} is missing or unreadable")
  records: dict[str, dict | None] = {}
  for name, entry in index["steps"].items():
    records[name] = graph_lib.read_provenance(root / entry["folder"])
  by_hash = {entry["hash"]: name for name, entry in index["steps"].items()}

  def counts(name: str) -> dict:  # written with "completed": an unfinished step has none
    return (records.get(name) or {}).get("counts") or {}

  steps = []
  for name, entry in index["steps"].items():
    record = records[name]
    status = "not run" if record is None else "done" if record.get("completed") else "interrupted"
    c = counts(name)
    steps.append(
      {
        "name": name,
        "command": entry["command"],
        "status": status,
        "wall_s": (record or {}).get("wall_s"),
        "attempts": len((record or {}).get("attempts", [])),
        "counts": {k: c.get(k) for k in HEADLINE.get(entry["command"], ())} if c else {},
        "llm_requests": c.get("llm_requests"),
        "llm_tokens": c.get("llm_tokens"),
        "folder": entry["folder"],
      }
    )

  variants = []
  for variant, description in index["variants"].items():
    mine = {n: e for n, e in index["steps"].items() if e["info"].get("variant") == variant}
    if not mine:
      continue
    seeds = sorted({e["info"]["seed"] for e in mine.values() if e["info"].get("role") == "pretrain"})
    role_step = {(e["info"].get("role"), e["info"].get("seed")): n for n, e in mine.items()}
    metrics = {}
    for metric, (role, key) in METRICS.items():
      if any((role, s) in role_step for s in seeds):
        metrics[metric] = [counts(role_step[(role, s)]).get(key) if (role, s) in role_step else None for s in seeds]
    first = role_step.get(("pretrain", seeds[0])) if seeds else None
    tokens_seen = counts(first).get("tokens_seen") if first else None
    epochs = {}
    for source_hash, weight in _mixture(mine[first]["identity"]) if first else []:
      pack = by_hash.get(source_hash, "")
      source_tokens = counts(pack).get("tokens") if pack else None
      epochs[pack.removeprefix("pack/")] = (
        round(tokens_seen * weight / source_tokens, 2) if tokens_seen and source_tokens else None
      )
    variants.append(
      {
        "name": variant,
        "description": description,
        "seeds": seeds,
        "tokens_seen": tokens_seen,
        "epochs": epochs,
        "metrics": metrics,
      }
    )

  table3 = {}
  for name, entry in index["steps"].items():
    if entry["info"].get("role") == "table3" and counts(name):
      table3.update(_table3_rows(root / entry["folder"] / "out", entry["info"]["variant"]))
  return {
    "recipe": recipe_name,
    "root": str(Path(root).absolute()),
    "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "wiring_test": index.get("wiring_test", False),
    "expected": index.get("expected", ""),
    "stand_ins": index.get("stand_ins", []),
    "variants": variants,
    "lower_is_better": LOWER_IS_BETTER,
    "steps": steps,
    "table3": table3 or None,
  }


def write_report(root: Path, recipe_name: str) -> tuple[Path, Path]:
  return report_lib.write(gather(root, recipe_name), root)
