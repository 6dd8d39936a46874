"""The datatrove steps: read documents as `pack` does, scan and split them, write the kept ones.

  InputReader -> DecontamStep -> JsonlWriter(OUT/clean/<input name>/${rank}.jsonl.gz)

Each input's kept documents stay apart (code, textbooks and exercises feed different stages).

Task r of T reads every .py file with index % T == r and every block (256 JSONL lines, or one parquet
row group) with block index % T == r, so one big JSONL or parquet file is shared by all tasks too. DecontamStep writes the removed
documents' rows to `OUT/work/removed/<rank>.jsonl` and the task's per-problem nearest documents and
counts to `OUT/work/stats/<rank>.json` (atomically, last), and datatrove marks the task complete
under `OUT/work/logs/completions/`; a rerun skips completed tasks and redoes the others from the
start (their files are overwritten, so nothing is counted twice).
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.jsonl import JsonlWriter

from phi1_jax.data.sources import parquet_row_groups, parquet_rows, parse_line, read_source
from phi1_jax.decontam.benchmarks import benchmark_of
from phi1_jax.decontam.index import METHODS, TABLE_TAUS, BenchmarkIndex

LINES_PER_BLOCK = 256
BATCH = 32  # documents embedded together
PROGRESS_EVERY_S = 30.0


class InputReader(PipelineStep):
  """Documents from pack-style inputs: ("jsonl" | "parquet", path, input name, text_key, id_key) and
  ("py", path, id, input name) units.

  Each document carries metadata["input"] (its input's name: the folder of clean/ it goes to) and
  metadata["_read"]: the input bytes this task has walked past (compressed bytes for .gz), for progress
  against the inputs' size on disk."""

  name = "decontam input"
  type = "📖 - READER"

  def __init__(self, units: list[tuple]):
    super().__init__()
    self.units = units

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    py_index = block_index = 0
    walked = 0  # bytes of the units before this one
    for unit in self.units:
      if unit[0] == "py":
        _, path, doc_id, source = unit
        mine = py_index % world_size == rank
        py_index += 1
        size = os.path.getsize(path)
        if mine:
          text, _, problem = read_source(path)
          if problem:
            self.stat_update("bad")
            yield Document(text="", id=problem, metadata={"bad": True, "_read": walked + size})
          elif text.strip():
            self.stat_update("documents")
            yield Document(
              text=text,
              id=doc_id,
              metadata={"source": "py", "meta": {"path": doc_id}, "input": source, "_read": walked + size},
            )
        walked += size
        continue
      kind, path, source, text_key, id_key = unit
      if kind == "parquet":
        for row_group, _, end in parquet_row_groups(path):
          block_index += 1
          if (block_index - 1) % world_size == rank:
            for row, text, doc_id in parquet_rows(path, row_group, text_key, id_key):
              if not text or not text.strip():
                continue  # a null or empty text: skipped, as pack skips it
              self.stat_update("documents")
              yield Document(
                text=text,
                id=doc_id or f"{Path(path).name}:{row}",
                metadata={"source": Path(path).name, "meta": {}, "input": source, "_read": walked + end},
              )
        walked += os.path.getsize(path)
        continue
      with open(path, "rb") as raw:
        lines = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw
        for lineno, line in enumerate(lines, 1):
          if (lineno - 1) % LINES_PER_BLOCK == 0:
            block_index += 1
          if (block_index - 1) % world_size != rank or not line.strip():
            continue
          doc, problem = parse_line(line, Path(path).name, lineno, text_key, id_key)
          if problem:
            self.stat_update("bad")
            yield Document(text="", id=problem, metadata={"bad": True, "_read": walked + raw.tell()})
            continue
          if not doc["text"].strip():
            continue  # an empty document: skipped, as pack skips it
          self.stat_update("documents")
          doc_id = doc.get("id") if isinstance(doc.get("id"), str) and doc.get("id") else f"{Path(path).name}:{lineno}"
          yield Document(
            text=doc["text"],
            id=doc_id,
            metadata={
              "source": doc.get("source", ""),
              "meta": doc.get("meta") or {},
              "input": source,
              "_read": walked + raw.tell(),
            },
          )
      walked += os.path.getsize(path)


def clean_adapter(self, document: Document) -> dict:
  """The project's JSONL document format, which `pack` reads."""
  return {
    "id": document.id,
    "text": document.text,
    "source": document.metadata.get("source", ""),
    "meta": document.metadata.get("meta", {}),
  }


class _Nearest:
  """Per problem and method: the best score and the document holding it."""

  def __init__(self):
    self.best: dict[str, dict[str, list]] = {m: {} for m in METHODS}

  def add(self, method: str, task: str, score: float, doc_id: str) -> None:
    current = self.best[method].get(task)
    closer = current is None or (score < current[0] if method == "embed" else score > current[0])
    if closer:
      self.best[method][task] = [score, doc_id]


class DecontamStep(PipelineStep):
  """Scans every document; yields the kept ones, records the removed ones and the per-problem nearest."""

  name = "decontam scan"
  type = "🦠 - DECONT"

  def __init__(
    self,
    index: BenchmarkIndex,
    work_dir: str,
    clean_dir: str,
    embedder_spec: dict | None = None,
    embedder=None,
    total_bytes: int = 0,
  ):
    super().__init__()
    self.index, self.work_dir, self.clean_dir = index, work_dir, clean_dir
    self.embedder_spec = embedder_spec  # a checkpoint: loaded in the task's process, never pickled
    self.embedder = embedder  # or an embedder object given from Python
    self.total_bytes = total_bytes

  def _embedder(self):
    if not self.embedder_spec:
      return self.embedder
    from phi1_jax.decontam import embedding

    return embedding.load_embedder(**self.embedder_spec)

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    work = Path(self.work_dir)
    for sub in ("removed", "stats", "progress"):
      (work / sub).mkdir(parents=True, exist_ok=True)
    for stale in Path(self.clean_dir).glob(f"*/{rank:05d}.jsonl.gz"):
      stale.unlink()  # left by an earlier try of this task that did not complete
    embedder = self._embedder()
    nearest = _Nearest()
    read = 0  # input bytes walked past (InputReader's _read), against total_bytes
    counts = {
      "documents": 0,
      "kept": 0,
      "kept_by_input": {},
      "removed": 0,
      "bad": 0,
      "functions": 0,
      "bytes": 0,
      "removed_by": {m: 0 for m in METHODS},
      "flagged_by": {m: 0 for m in METHODS},
      "ast_at_tau": {},
      "bad_items": [],
    }
    start = last_report = time.time()
    progress = open(work / "progress" / f"{rank:05d}.jsonl", "w", encoding="utf-8")
    removed_path = work / "removed" / f"{rank:05d}.jsonl"
    with open(removed_path, "w", encoding="utf-8") as removed:
      for batch in _batches(data, BATCH):
        docs = [d for d in batch if not d.metadata.get("bad")]
        read = batch[-1].metadata.pop("_read", read)
        for d in batch:
          d.metadata.pop("_read", None)
        for d in batch:
          if d.metadata.get("bad"):
            counts["bad"] += 1
            if len(counts["bad_items"]) < 20:
              counts["bad_items"].append(d.id)
        embeddings = embedder.embed([d.text for d in docs]) if embedder is not None and docs else None
        for i, doc in enumerate(docs):
          scan = self.index.scan(doc.text, None if embeddings is None else embeddings[i])
          counts["documents"] += 1
          counts["functions"] += scan.functions
          counts["bytes"] += len(doc.text.encode("utf-8", errors="replace"))
          for method, scores in scan.scores.items():
            for task, score in scores.items():
              nearest.add(method, task, score, doc.id)
          ast_best: dict[str, float] = {}  # per benchmark: for Table 3's documents column
          for task, rate in scan.scores.get("ast", {}).items():
            name = benchmark_of(task)
            ast_best[name] = max(ast_best.get(name, 0.0), rate)
          for name, rate in ast_best.items():
            for tau in TABLE_TAUS:
              key = f"{name}@{tau}"
              counts["ast_at_tau"][key] = counts["ast_at_tau"].get(key, 0) + int(rate >= tau)
          verdicts = self.index.verdicts(scan)
          for v in verdicts:
            counts["flagged_by"][v["method"]] += 1
          if verdicts:
            counts["removed"] += 1
            counts["removed_by"][verdicts[0]["method"]] += 1
            self.stat_update("removed")
            row = {"id": doc.id, **verdicts[0], "matches": verdicts, "source": doc.metadata.get("source", "")}
            removed.write(json.dumps(row) + "\n")
          else:
            counts["kept"] += 1
            counts["kept_by_input"][doc.metadata["input"]] = counts["kept_by_input"].get(doc.metadata["input"], 0) + 1
            self.stat_update("kept")
            yield doc
        if time.time() - last_report >= PROGRESS_EVERY_S:
          last_report = time.time()
          self._progress(rank, world_size, counts, read, time.time() - start, progress)
    self._progress(rank, world_size, counts, self.total_bytes, time.time() - start, progress)
    progress.close()
    trees = self.index.trees
    counts["ast_pairs"] = {"all": trees.pairs, "in_size_band": trees.in_band, "tree_edit_distances": trees.computed}
    counts["seconds"] = round(time.time() - start, 3)
    stats = {"rank": rank, "counts": counts, "nearest": nearest.best}
    tmp = work / "stats" / f".{rank:05d}.json.tmp"
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, work / "stats" / f"{rank:05d}.json")

  def _progress(self, rank, world_size, counts, read, seconds, file) -> None:
    """A line with rate and ETA (input bytes walked past, of the inputs' size on disk) and a JSONL row to plot.
    Printed to stdout: datatrove's stderr goes to its log file."""
    total = max(self.total_bytes, 1)
    rate = read / max(seconds, 1e-9)
    eta = max(total - read, 0) / rate if rate else float("inf")
    print(
      f"decontam task {rank}/{world_size}: {counts['documents']} documents, {read / 1e6:.1f}/{total / 1e6:.1f} MB "
      f"({read / total:.0%}), {counts['documents'] / max(seconds, 1e-9):.1f} docs/s, "
      f"{counts['removed']} removed, ETA {eta:.0f}s",
      flush=True,
    )
    file.write(
      json.dumps(
        {
          "seconds": round(seconds, 2),
          "documents": counts["documents"],
          "bytes": counts["bytes"],
          "read": read,
          "removed": counts["removed"],
          "docs_per_s": round(counts["documents"] / max(seconds, 1e-9), 2),
        }
      )
      + "\n"
    )
    file.flush()


def _batches(data, size: int):
  batch = []
  for doc in data or ():
    batch.append(doc)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def build_pipeline(
  units: list[tuple], index: BenchmarkIndex, out: Path, embedder_spec: dict | None, embedder=None, total_bytes: int = 0
) -> list:
  clean = out / "clean"
  return [
    InputReader(units),
    DecontamStep(index, str(out / "work"), str(clean), embedder_spec, embedder, total_bytes),
    JsonlWriter(str(clean), output_filename="${input}/${rank}.jsonl.gz", adapter=clean_adapter),
  ]
