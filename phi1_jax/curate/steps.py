"""The datatrove pipeline steps of `curate filter`.

Documents travel as datatrove `Document`s whose metadata is `{"source": str, "meta": dict}`; the
writer adapter turns them back into this project's JSONL rows `{"id", "text", "source", "meta"}`.
Steps hold only paths and numbers (they are pickled to worker processes); the embedder and the
classifier are loaded once per process, on first use.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.logging import logger
from datatrove.utils.word_tokenizers import WordTokenizer

from phi1_jax.curate import documents

SCORE_KEY = "edu_score"  # the classifier's probability of "educational", in each document's meta
TOKENS_KEY = "n_tokens"  # the document's length in the embedder's tokenizer
_PROGRESS_EVERY_S = 10.0
_loaded: dict = {}  # per process: classifier folder -> (embedder, model, info)


def to_row(self, document: Document) -> dict:
  """datatrove writer adapter: a Document as this project's JSONL row."""
  return {
    "id": document.id,
    "text": document.text,
    "source": document.metadata.get("source", ""),
    "meta": document.metadata.get("meta", {}),
  }


def _document(doc: dict) -> Document:
  return Document(text=doc["text"], id=doc["id"], metadata={"source": doc["source"], "meta": doc["meta"]})


class InputReader(PipelineStep):
  """Reads the --input files (as pack does); task `rank` takes files rank, rank + T, ...

  Each document carries metadata["_read"] = (bytes of this task's files read, their total), for
  the Progress step at the end of the pipeline (not written out).
  """

  name = "phi1_jax input"
  type = "📖 - READER"

  def __init__(self, files: list[tuple[str, str, str, str]]):
    super().__init__()
    self.files = files

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    shard = self.files[rank::world_size]
    total = sum(os.path.getsize(f[0]) for f in shard)
    done = 0
    for file, root, text_key, id_key in shard:
      bad: list[str] = []
      for doc, offset in documents.read_file_offsets(file, root, text_key, id_key, bad):
        self.stat_update("documents")
        d = _document(doc)
        d.metadata["_read"] = (done + offset, total)
        yield d
      for item in bad:  # counted in the stage's stats, named in its log, passed over as pack does
        self.stat_update("bad")
        logger.warning(f"bad item {item}")
      done += os.path.getsize(file)


class Progress(PipelineStep):
  """At the end of a pipeline: a line (documents, MB, documents/s, ETA) every 10 s and at the end,
  the same numbers appended to `metrics_dir/<stage>-<rank>.jsonl`."""

  name = "phi1_jax progress"
  type = "📊 - STATS"

  def __init__(self, stage: str, metrics_dir: str):
    super().__init__()
    self.stage, self.metrics_dir = stage, metrics_dir

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    Path(self.metrics_dir).mkdir(parents=True, exist_ok=True)
    n, done, total, t0 = 0, 0, 0, time.perf_counter()
    last = t0
    with open(Path(self.metrics_dir) / f"{self.stage}-{rank:05d}.jsonl", "a") as metrics:

      def report():
        dt = max(time.perf_counter() - t0, 1e-9)
        eta = (total - done) / max(done / dt, 1e-9)
        row = {
          "time": time.time(),
          "stage": self.stage,
          "rank": rank,
          "documents": n,
          "bytes": done,
          "bytes_total": total,
          "docs_per_sec": round(n / dt, 3),
          "eta_s": round(eta, 1),
        }
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        print(
          f"{self.stage} task {rank}: {n} documents, {done / 1e6:.1f}/{total / 1e6:.1f} MB, "
          f"{row['docs_per_sec']:.2f} doc/s, ETA {eta:.0f}s",
          flush=True,
        )

      for doc in data:
        n += 1
        done, total = doc.metadata.pop("_read", (done, total))
        yield doc
        if time.perf_counter() - last > _PROGRESS_EVERY_S:
          last = time.perf_counter()
          report()
      report()


class RankReader(PipelineStep):
  """Reads the JSONL shard an earlier stage's task `rank` wrote (`folder/<rank>.jsonl.gz`), so every
  later stage sees each task's documents in the same order (MinHash needs that)."""

  name = "phi1_jax rank shard"
  type = "📖 - READER"

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder

  def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    path = Path(self.folder) / f"{rank:05d}.jsonl.gz"
    if not path.is_file():  # a task that had no input files wrote nothing
      return
    with gzip.open(path, "rt", encoding="utf-8") as fh:
      for line in fh:
        self.stat_update("documents")
        yield _document(json.loads(line))


def load_scorer(classifier_dir: str, batch_size: int = 16):
  """(embedder, model, info), loaded once per process; refuses an embedder other than the one the
  classifier was trained on."""
  if classifier_dir not in _loaded:
    from phi1_jax.curate.classifier import load_classifier
    from phi1_jax.cli import UserError
    from phi1_jax.stages.embed import Embedder

    model, info = load_classifier(classifier_dir)
    e = info["embedder"]
    embedder = Embedder(
      e["checkpoint"], e["tokenizer"], max_len=e["max_len"], pooling=e["pooling"], batch_size=batch_size
    )
    if embedder.fingerprint != e["fingerprint"]:
      raise UserError(
        f"{e['checkpoint']}: its parameters or tokenizer changed since the classifier in "
        f"{classifier_dir} was trained (embedder fingerprint {embedder.fingerprint} != {e['fingerprint']})"
      )
    _loaded[classifier_dir] = (embedder, model, info)
  return _loaded[classifier_dir]


class EmbedClassify(PipelineStep):
  """Embeds documents in batches and writes the classifier's P(educational) into meta[SCORE_KEY]
  and the document's token count into meta[TOKENS_KEY]."""

  name = "phi1_jax embed + classify"
  type = "🔢 - INFERENCE"

  def __init__(self, classifier_dir: str, batch_size: int = 16, batch_docs: int = 128):
    super().__init__()
    self.classifier_dir, self.batch_size, self.batch_docs = classifier_dir, batch_size, batch_docs

  def _score(self, batch: list[Document]) -> list[Document]:
    embedder, model, _ = load_scorer(self.classifier_dir, self.batch_size)
    ids = embedder.tokenizer.encode_batch([d.text for d in batch])
    vecs = embedder.embed_tokens([t[: embedder.max_len] or [0] for t in ids])
    # The classifier was trained on float16-stored embeddings: round the same way.
    prob = model.predict_proba(vecs.astype(np.float16).astype(np.float32))[:, list(model.classes_).index(True)]
    for doc, toks, p in zip(batch, ids, prob):
      doc.metadata["meta"] = {**doc.metadata.get("meta", {}), SCORE_KEY: round(float(p), 6), TOKENS_KEY: len(toks)}
    return batch

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    batch = []
    for doc in data:
      batch.append(doc)
      if len(batch) == self.batch_docs:
        with self.track_time(unit="batch"):
          yield from self._score(batch)
        batch = []
    if batch:
      yield from self._score(batch)


class ScoreCut(BaseFilter):
  """Keeps documents whose meta[SCORE_KEY] is at least `cut`."""

  name = "phi1_jax score cut"

  def __init__(self, cut: float):
    super().__init__()
    self.cut = cut

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    return doc.metadata["meta"][SCORE_KEY] >= self.cut or (False, "below_cut")


class CountBySource(PipelineStep):
  """Passes documents on; when the task's stream ends, writes documents and tokens per source to
  `folder/<rank>.json` (the manifest sums these)."""

  name = "phi1_jax count"
  type = "📊 - STATS"

  def __init__(self, folder: str):
    super().__init__()
    self.folder = folder

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    counts: dict[str, dict[str, int]] = {}
    for doc in data:
      c = counts.setdefault(doc.metadata.get("source", ""), {"documents": 0, "tokens": 0})
      c["documents"] += 1
      c["tokens"] += int(doc.metadata.get("meta", {}).get(TOKENS_KEY, 0))
      yield doc
    Path(self.folder).mkdir(parents=True, exist_ok=True)
    tmp = Path(self.folder) / f".{rank:05d}.json.tmp"
    tmp.write_text(json.dumps(counts, sort_keys=True))
    os.replace(tmp, Path(self.folder) / f"{rank:05d}.json")


class CodeWords(WordTokenizer):
  """Whitespace words, for MinHash shingles of code (datatrove's language tokenizers need spaCy or
  NLTK; datatrove's text normalisation has already removed punctuation)."""

  def __init__(self):
    super().__init__("code")

  def word_tokenize(self, text: str) -> list[str]:
    return text.split()

  def sent_tokenize(self, text: str) -> list[str]:
    return text.splitlines()

  def span_tokenize(self, text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for line in text.splitlines(keepends=True):
      spans.append((start, start + len(line)))
      start += len(line)
    return spans
