"""Each stage's outcome as numbers: what a recipe report shows for a step's output folder.

`outcome(command, out_dir)` reads the files the stage itself wrote (manifest.json, model_info.json,
summary.json, config.json, metrics.jsonl, llm_cache.sqlite) and recomputes nothing. The answer is a
flat dict of str -> int / float / str / bool / None with the same keys whatever the folder holds
(per-source, per-reason and pass@k keys excepted): a missing or unreadable file leaves its numbers
None, so a report renders from a partial run. `llm_usage(out_dir)`: what the LLM stages paid for.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

Outcome = dict[str, int | float | str | bool | None]
ADDITIVE_SCORES = range(6)  # curate annotate's additive 0-5 scale


def _json(path: Path) -> dict:
  """The JSON object in `path`, or {} when it is missing, unreadable or not an object."""
  try:
    found = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}
  return found if isinstance(found, dict) else {}


def _get(obj, *keys):
  """obj[k1][k2]... when every step is there and the value is a number or a string, else None."""
  for key in keys:
    if not isinstance(obj, dict) or key not in obj:
      return None
    obj = obj[key]
  return obj if isinstance(obj, int | float | str | bool) else None


def _dict(value) -> dict:
  """`value` when it is a dict, else {} (a file cut short or from another version)."""
  return value if isinstance(value, dict) else {}


def _product(a, b):
  return a * b if isinstance(a, int) and isinstance(b, int) else None


def llm_usage(out_dir) -> dict[str, int | None]:
  """{"llm_requests": answers paid for, "llm_tokens": their prompt + completion tokens}, counted in
  the folder's llm_cache.sqlite (every answer received, over every run into the folder; synth's
  `--cache` elsewhere is found through its manifest). 0 and 0 without a cache (no LLM was paid
  for here); None for a cache that cannot be read. A cache shared by several folders counts them all."""
  out = Path(out_dir)
  named = _get(_json(out / "manifest.json"), "config", "cache_path")
  caches = [Path(c) for c in (named, out / "llm_cache.sqlite") if c and Path(c).is_file()]
  if not caches:
    return {"llm_requests": 0, "llm_tokens": 0}
  try:  # read-only: a report never changes a stage's cache
    with contextlib.closing(sqlite3.connect(caches[0].resolve().as_uri() + "?mode=ro", uri=True)) as db:
      requests, tokens = db.execute(
        "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0) + COALESCE(SUM(completion_tokens), 0) FROM answers"
      ).fetchone()
  except sqlite3.Error:
    return {"llm_requests": None, "llm_tokens": None}
  return {"llm_requests": int(requests), "llm_tokens": int(tokens)}


def _tokenizer(out: Path) -> Outcome:
  manifest = _json(out / "manifest.json")  # the stage records no document or byte counts
  inputs = manifest.get("inputs")
  return {
    "vocab_size": _get(manifest, "vocab_size"),
    "eos_id": _get(manifest, "eos_id"),
    "sentences_used": _get(manifest, "sentences_used"),
    "inputs": len(inputs) if isinstance(inputs, list) else None,
  }


def _pack(out: Path) -> Outcome:
  """`tokens`: the train split's records x seq_len, the targets one pass over it trains on, in the unit
  of train's tokens_seen (steps x batch_size x seq_len), so epochs = tokens_seen / tokens. (A record
  holds seq_len + 1 tokens, the last one shared with the next record.) stream_tokens_*: the manifest's
  tokens of each split's stream, the tail shorter than a record included."""
  manifest = _json(out / "manifest.json")
  seq_len = _get(manifest, "seq_len")
  records_train, records_eval = _get(manifest, "records", "train"), _get(manifest, "records", "eval")
  return {
    "seq_len": seq_len,
    "documents": _get(manifest, "documents"),
    "documents_train": _get(manifest, "splits", "train", "documents"),
    "documents_eval": _get(manifest, "splits", "eval", "documents"),
    "records_train": records_train,
    "records_eval": records_eval,
    "tokens": _product(records_train, seq_len),
    "tokens_eval": _product(records_eval, seq_len),
    "stream_tokens_train": _get(manifest, "splits", "train", "tokens"),
    "stream_tokens_eval": _get(manifest, "splits", "eval", "tokens"),
    "skipped_empty": _get(manifest, "skipped_empty"),
    "bad_items": _get(manifest, "bad", "count"),
  }


def _annotate(out: Path) -> Outcome:
  manifest = _json(out / "manifest.json")
  histogram = manifest.get("score_histogram")
  histogram = histogram if isinstance(histogram, dict) else None
  additive = _get(manifest, "config", "scoring") == "additive"
  scores = {f"score_{s}": _get(histogram, str(s)) if histogram is not None else None for s in ADDITIVE_SCORES}
  if histogram is not None:  # the stage lists the scores it saw: the others were seen 0 times
    scores = {k: 0 if v is None else v for k, v in scores.items()}
  return {
    "documents": _get(manifest, "documents"),
    "annotated": _get(manifest, "annotated"),
    "remaining": _get(manifest, "remaining"),
    "unparseable": _get(manifest, "unparseable"),
    "model": _get(manifest, "config", "model"),
    **(scores if additive or not manifest else {}),
    **llm_usage(out),
    "llm_requests_sent_last_run": _get(manifest, "llm_this_run", "requests_sent"),  # retries included
  }


def _embed(out: Path) -> Outcome:
  manifest = _json(out / "manifest.json")
  return {
    "documents": _get(manifest, "documents"),
    "documents_embedded_last_run": _get(manifest, "this_run", "documents_embedded"),
    "tokens_embedded_last_run": _get(manifest, "this_run", "tokens_embedded"),
    "dim": _get(manifest, "embedder", "dim"),
  }


def _classifier(out: Path) -> Outcome:
  info = _json(out / "model_info.json")
  model = _get(info, "model")
  metrics = _dict(_dict(info.get("metrics")).get(model))
  return {
    "model": model,
    "precision": _get(metrics, "precision"),
    "recall": _get(metrics, "recall"),
    "f1": _get(metrics, "f1"),
    "roc_auc": _get(metrics, "roc_auc"),
    "held_out": _get(metrics, "n"),
    "held_out_positives": _get(metrics, "positives"),
    "train_documents": _get(info, "train_documents"),
    "threshold": _get(info, "threshold"),
  }


def _filter(out: Path) -> Outcome:
  totals = _dict(_json(out / "manifest.json").get("totals"))
  return {
    "documents_read": _get(totals, "documents_in"),
    "documents_kept": _get(totals, "documents_out"),
    "tokens_read": _get(totals, "tokens_in"),
    "tokens_kept": _get(totals, "tokens_out"),
    "kept_fraction": _get(totals, "kept_fraction"),
    "kept_token_fraction": _get(totals, "kept_token_fraction"),
  }


def _synth(out: Path, kind: str) -> Outcome:
  """answers_received: the answers the last run of each task used, paid for or from the cache."""
  manifest = _json(out / "manifest.json")
  paid, cached = _get(manifest, "llm", "answers_paid"), _get(manifest, "llm", "answers_cached")
  rejected = _dict(manifest.get("counts")).get("rejected")
  rejected = rejected if isinstance(rejected, dict) else None
  found = {
    "complete": _get(manifest, "complete"),
    "requested": _get(manifest, "counts", "requested"),
    "written": _get(manifest, "counts", "written"),
    "answers_received": paid + cached if isinstance(paid, int) and isinstance(cached, int) else None,
    "rejected": sum(v for v in rejected.values() if isinstance(v, int)) if rejected is not None else None,
    **{f"rejected/{reason}": _get(rejected, reason) for reason in rejected or {}},
    **llm_usage(out),
    "llm_requests_sent_last_run": _get(manifest, "llm", "requests_sent"),  # each task's last run, retries included
  }
  if kind == "exercises":
    found.update(
      executed=_get(manifest, "exercises", "executed"),
      passed_own_tests=_get(manifest, "exercises", "passed_own_tests"),
      pass_rate=_get(manifest, "exercises", "pass_rate"),
    )
  return found


def _decontam(out: Path) -> Outcome:
  """kept/<name>: the documents kept from each input, by its folder under OUT/clean/."""
  manifest = _json(out / "manifest.json")
  removed_by = _dict(manifest.get("removed_by"))
  outputs = manifest.get("outputs") if isinstance(manifest.get("outputs"), list) else []
  return {
    "documents_read": _get(manifest, "documents"),
    "documents_kept": _get(manifest, "kept"),
    "documents_removed": _get(manifest, "removed"),
    "bad_items": _get(manifest, "bad"),
    **{f"removed/{method}": _get(removed_by, method) for method in removed_by},
    **{f"kept/{Path(str(o.get('folder'))).name}": _get(o, "kept") for o in outputs if isinstance(o, dict)},
  }


def _metric_rows(path: Path) -> list[dict]:
  """metrics.jsonl's rows by step, the last row of a step winning (a resumed run logs some steps
  again); a torn or foreign line is passed over."""
  by_step = {}
  try:
    with open(path, encoding="utf-8") as lines:
      for line in lines:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
          by_step[row["step"]] = row
  except OSError:
    return []
  return [by_step[step] for step in sorted(by_step)]


def _train(workdir: Path) -> Outcome:
  """The last logged step's train loss and the last eval's losses (eval_loss/<source> over a
  mixture); tokens_seen = final_step x batch_size x seq_len (config.json); train_seconds: the
  logged windows' time (each row's steps since the row before, at its tokens_per_sec: the loop's
  own time, compilation and evaluations included, start-up and pauses between runs not)."""
  config = _json(workdir / "config.json")
  rows = _metric_rows(workdir / "metrics.jsonl")
  last = rows[-1] if rows else {}
  evals = [r for r in rows if "eval_loss" in r]
  last_eval = evals[-1] if evals else {}
  batch_size, seq_len = _get(config, "batch_size"), _get(config, "seq_len")
  final_step = _get(last, "step")
  seconds, previous_step = 0.0, 0
  for row in rows:
    rate = row.get("tokens_per_sec")
    if not isinstance(rate, int | float) or rate <= 0 or not isinstance(batch_size, int):
      seconds = None
      break
    seconds += (row["step"] - previous_step) * batch_size * seq_len / rate
    previous_step = row["step"]
  found = {
    "final_step": final_step,
    "total_steps": _get(config, "total_steps"),
    "final_loss": _get(last, "loss"),
    "eval_step": _get(last_eval, "step"),
    "final_eval_loss": _get(last_eval, "eval_loss"),
    **{f"final_{k}": _get(last_eval, k) for k in sorted(last_eval) if k.startswith("eval_loss/")},
    "batch_size": batch_size,
    "seq_len": seq_len,
    "tokens_seen": _product(_product(final_step, batch_size), seq_len),
    "train_seconds": round(seconds, 3) if rows and seconds is not None else None,
  }
  for name in ("humaneval_canonical_loss", "humaneval_pass@1"):  # the trainer's HumanEval signals, when logged
    logged = [r for r in rows if name in r]
    found[f"final_{name}"] = _get(logged[-1], name) if logged else None
  return found


def _eval(out: Path) -> Outcome:
  summary = _json(out / "summary.json")
  passes = {k: _get(summary, k) for k in summary if k.startswith(("pass@", "base_pass@", "raw_pass@"))}
  return {
    "benchmark": _get(summary, "benchmark"),
    "pass@1": _get(summary, "pass@1"),
    **passes,
    "n_samples": _get(summary, "n_samples_per_problem"),
    "n_samples_total": _get(summary, "n_samples_total"),
    "problems": _get(summary, "n_problems"),
    "n_passed": _get(summary, "n_passed"),
    "canonical_loss": _get(summary, "canonical_loss"),
    "canonical_loss_problems": _get(summary, "canonical_loss_problems"),
    "grade_mean": _get(summary, "grade_mean"),
    "reference": _get(summary, "reference"),
    **llm_usage(out),  # the grader's, when one graded the samples
  }


READERS = {
  "data.tokenizer train": _tokenizer,
  "data.pack": _pack,
  "curate annotate": _annotate,
  "curate embed": _embed,
  "curate train-classifier": _classifier,
  "curate filter": _filter,
  "synth textbooks": lambda out: _synth(out, "textbooks"),
  "synth exercises": lambda out: _synth(out, "exercises"),
  "decontam": _decontam,
  "train": _train,
  "eval": _eval,
}


def outcome(command: str, out_dir) -> Outcome:
  """The numbers of the step `command` (a key of phi1_jax.recipe.steps.COMMANDS) whose output folder
  (a train step's workdir) is `out_dir`."""
  if command not in READERS:
    raise ValueError(f"no outcome for command {command!r}: one of {', '.join(READERS)}")
  return READERS[command](Path(out_dir))
