"""The `curate filter` stage: a datatrove pipeline from raw documents to filtered, deduplicated JSONL.

  1 score:  read --input -> embed + classify (P(educational) into meta.edu_score, token count into
            meta.n_tokens) -> count -> OUT/scored/<task>.jsonl.gz (every document, for inspection
            and for another cut without re-embedding)
  2 sig:    OUT/scored -> keep score >= cut -> MinHash signatures     (datatrove's MinHash steps)
  3 buckets, 4 cluster: duplicate pairs -> clusters -> ids to remove
  5 write:  OUT/scored -> keep score >= cut -> count -> drop near-duplicates (removed ones to
            OUT/duplicates) -> count -> OUT/data/<task>.jsonl.gz
  OUT/manifest.json: documents and tokens in / above the cut / out per source, kept fractions,
            the classifier's identity and metrics, inputs with checksums.

Each stage runs on a datatrove executor (local pool, SLURM or Ray: phi1_jax/stages/executors.py) whose
logging folder OUT/logs/<stage> holds a completion marker per task: a rerun does no finished task
again, and a task killed half way is done again from its start, its output file rewritten whole.
OUT/config.json pins the settings that decide the output; a rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

from phi1_jax.stages import executors
from phi1_jax.curate import documents
from phi1_jax.cli import UserError
from phi1_jax.curate.common import check_config, write_json_atomic
from phi1_jax.data import sources

FORMAT = "phi1_jax.filtered/v1"
STAGES = ("score", "sig", "buckets", "cluster", "write")


def _minhash_config(n_grams: int, num_buckets: int, hashes_per_bucket: int):
  from datatrove.pipeline.dedup.minhash import MinhashConfig
  from datatrove.utils.hashing import HashConfig

  # sha1 rather than xxhash: no extra dependency, and the hash speed does not matter next to embedding.
  return MinhashConfig(
    n_grams=n_grams,
    num_buckets=num_buckets,
    hashes_per_bucket=hashes_per_bucket,
    hash_config=HashConfig(precision=64, hash_fc="sha1"),
  )


def _sum_counts(folder: Path) -> dict[str, dict[str, int]]:
  total: dict[str, dict[str, int]] = {}
  for f in sorted(folder.glob("*.json")):
    for source, c in json.loads(f.read_text()).items():
      t = total.setdefault(source, {"documents": 0, "tokens": 0})
      t["documents"] += c["documents"]
      t["tokens"] += c["tokens"]
  return total


def _completed(out: Path, stage: str, tasks: int) -> bool:
  done = out / "logs" / stage / "completions"
  return done.is_dir() and len(list(done.iterdir())) >= tasks


def build_manifest(out: Path, config: dict, described: list[dict], info: dict, seconds: float) -> dict:
  counts = {name: _sum_counts(out / "counts" / name) for name in ("in", "above_cut", "out")}
  by_source = {}
  for source in sorted(counts["in"]):
    row = {}
    for name in ("in", "above_cut", "out"):
      c = counts[name].get(source, {"documents": 0, "tokens": 0})
      row[f"documents_{name}"], row[f"tokens_{name}"] = c["documents"], c["tokens"]
    row["kept_fraction"] = row["documents_out"] / max(row["documents_in"], 1)
    row["kept_token_fraction"] = row["tokens_out"] / max(row["tokens_in"], 1)
    by_source[source] = row
  totals = {
    k: sum(r[k] for r in by_source.values())
    for k in ("documents_in", "tokens_in", "documents_above_cut", "tokens_above_cut", "documents_out", "tokens_out")
  }
  totals["kept_fraction"] = totals["documents_out"] / max(totals["documents_in"], 1)
  totals["kept_token_fraction"] = totals["tokens_out"] / max(totals["tokens_in"], 1)
  return {
    "format": FORMAT,
    "config": config,
    "inputs": documents.public(described),
    "classifier": {
      "path": config["classifier"],
      "sha256": config["classifier_sha256"],
      "model": info["model"],
      "threshold": info["threshold"],
      "metrics": info["metrics"][info["model"]],
      "embedder": info["embedder"],
    },
    "by_source": by_source,
    "totals": totals,
    "data": sorted(p.name for p in (out / "data").glob("*.jsonl.gz")),
    "seconds_this_run": round(seconds, 3),
  }


def run_filter(
  inputs,
  classifier,
  out,
  *,
  run_on=None,
  tasks=1,
  workers=None,
  cut=None,
  batch_size=16,
  n_grams=5,
  num_buckets=14,
  hashes_per_bucket=8,
  text_key="text",
  id_key="id",
  log=print,
) -> dict | None:
  """Runs (or resumes) every stage; returns the manifest, or None when SLURM jobs were submitted and
  not waited for (the same command again, once they are done, writes the manifest). `run_on`: the
  executor flags (phi1_jax.stages.executors.add_args); None runs here."""
  run_on = run_on or SimpleNamespace(executor="local")
  if tasks < 1 or (workers is not None and workers < 1) or batch_size < 1:
    raise UserError(f"--tasks={tasks}, --workers={workers} and --batch_size={batch_size} must be positive")
  executors.check(run_on)
  described = sources.describe_inputs(inputs, text_key, id_key)
  from phi1_jax.curate.classifier import load_classifier

  classifier = Path(classifier).resolve()
  _, info = load_classifier(classifier)
  cut = info["cut"] if cut is None else cut
  if not 0 <= cut <= 1:
    raise UserError(f"--cut={cut} must be in [0, 1] (a probability)")
  emb = info["embedder"]
  for key in ("checkpoint", "tokenizer"):
    if not Path(emb[key]).exists():
      raise UserError(f"--classifier {classifier}: its embedder's {key} {emb[key]} is gone")
  out = Path(out).resolve()
  config = {
    "format": FORMAT,
    "inputs": sources.fingerprints(described),
    "classifier": str(classifier),
    "classifier_sha256": hashlib.sha256((classifier / "classifier.skops").read_bytes()).hexdigest(),
    "embedder": emb["fingerprint"],
    "cut": cut,
    "tasks": tasks,
    "minhash": {"n_grams": n_grams, "num_buckets": num_buckets, "hashes_per_bucket": hashes_per_bucket},
  }
  check_config(out, config)

  from datatrove.pipeline.dedup.minhash import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
  )
  from datatrove.pipeline.writers.jsonl import JsonlWriter

  from phi1_jax.curate import steps

  mh = _minhash_config(n_grams, num_buckets, hashes_per_bucket)
  files = documents.input_files(described)

  def writer(name):
    return JsonlWriter(str(out / name), output_filename="${rank}.jsonl.gz", adapter=steps.to_row)

  stages = {
    "score": (
      [
        steps.InputReader(files),
        steps.EmbedClassify(str(classifier), batch_size=batch_size),
        steps.CountBySource(str(out / "counts" / "in")),
        writer("scored"),
        steps.Progress("score", str(out / "metrics")),
      ],
      tasks,
    ),
    "sig": (
      [
        steps.RankReader(str(out / "scored")),
        steps.ScoreCut(cut),
        MinhashDedupSignature(str(out / "minhash" / "signatures"), config=mh, language=steps.CodeWords()),
      ],
      tasks,
    ),
    "buckets": (
      [MinhashDedupBuckets(str(out / "minhash" / "signatures"), str(out / "minhash" / "buckets"), config=mh)],
      mh.num_buckets,
    ),
    "cluster": (
      [MinhashDedupCluster(str(out / "minhash" / "buckets"), str(out / "minhash" / "remove_ids"), config=mh)],
      1,
    ),
    "write": (
      [
        steps.RankReader(str(out / "scored")),
        steps.ScoreCut(cut),
        steps.CountBySource(str(out / "counts" / "above_cut")),
        MinhashDedupFilter(str(out / "minhash" / "remove_ids"), exclusion_writer=writer("duplicates")),
        steps.CountBySource(str(out / "counts" / "out")),
        writer("data"),
      ],
      tasks,
    ),
  }
  t0 = time.perf_counter()
  done_before = all(_completed(out, name, stages[name][1]) for name in STAGES)
  plan = [executors.Stage(name, *stages[name], out / "logs" / name) for name in STAGES]
  if not executors.run(run_on, plan, workers, "curate", out / "logs", log=log):
    return None  # submitted to SLURM: the message says how to follow the jobs
  manifest = build_manifest(out, config, described, info, time.perf_counter() - t0)
  manifest["resumed_finished_run"] = done_before
  write_json_atomic(out / "manifest.json", manifest)
  t = manifest["totals"]
  log(
    f"{out}: kept {t['documents_out']}/{t['documents_in']} documents ({100 * t['kept_fraction']:.1f}%), "
    f"{t['tokens_out']}/{t['tokens_in']} tokens; {t['documents_above_cut']} above the cut {cut}, "
    f"{t['documents_above_cut'] - t['documents_out']} near-duplicates removed"
  )
  return manifest
