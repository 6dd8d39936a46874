"""Reading curation inputs as pack reads them, and a deterministic sample of them.

Inputs: JSONL documents `{"id", "text", "source", "meta"}` (`.jsonl` / `.jsonl.gz`), `.py` files and
folders of `.py` files. A `.py` file's id is `<folder name>/<path inside it>` (as pack names it); a
JSONL line without an id gets `<file name>:<line>`. Blank documents are skipped, as pack skips them.
"""

from __future__ import annotations

import gzip
import hashlib
import heapq
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

from phi1_jax.curate.common import UserError
from phi1_jax.data.pack import PackError, _describe_inputs


class InputError(UserError):
  """An unusable input: missing path, bad JSON, a document without text, a repeated id."""


def describe_inputs(inputs: Sequence[str | os.PathLike]) -> list[dict]:
  """Each input with its files, bytes and a sha256 (pack's description), for manifests."""
  try:
    described = _describe_inputs(inputs)
  except PackError as e:
    raise InputError(str(e)) from None
  return described


def public(described: list[dict]) -> list[dict]:
  """The manifest view of describe_inputs (no private file lists)."""
  return [{k: v for k, v in d.items() if not k.startswith("_")} for d in described]


def input_files(described: list[dict]) -> list[tuple[str, str]]:
  """(file, root) for every file of every input, in a fixed order."""
  return [(str(f), str(d["_root"])) for d in described for f in d["_files"]]


def read_file(file: str, root: str) -> Iterator[dict]:
  """The documents of one input file, each `{"id", "text", "source", "meta"}`."""
  for doc, _ in read_file_offsets(file, root):
    yield doc


def read_file_offsets(file: str, root: str) -> Iterator[tuple[dict, int]]:
  """(document, bytes of the file read so far, compressed bytes for .gz) for progress and ETA."""
  path = Path(file)
  if path.name.endswith(".py"):
    try:
      text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
      raise InputError(f"{path}: not UTF-8") from None
    if text.strip():
      rel = path.relative_to(root).as_posix()
      yield {"id": f"{Path(root).name}/{rel}", "text": text, "source": Path(root).name, "meta": {"path": rel}}, \
          path.stat().st_size
    return
  with open(path, "rb") as raw:
    fh = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
    for lineno, line in enumerate(fh, 1):
      if not line.strip():
        continue
      try:
        doc = json.loads(line)
      except ValueError:  # also UnicodeDecodeError
        raise InputError(f"{path}:{lineno}: not valid JSON (UTF-8)") from None
      text = doc.get("text") if isinstance(doc, dict) else None
      if not isinstance(text, str):
        raise InputError(f"{path}:{lineno}: no text")
      if not text.strip():
        continue
      doc_id = doc.get("id")
      meta = doc.get("meta")
      yield {"id": doc_id if isinstance(doc_id, str) and doc_id else f"{path.name}:{lineno}", "text": text,
             "source": str(doc.get("source") or path.name), "meta": meta if isinstance(meta, dict) else {}}, raw.tell()


def iter_documents(described: list[dict]) -> Iterator[dict]:
  """Every document of every input, in a fixed order; a repeated id is an error."""
  seen = set()
  for file, root in input_files(described):
    for doc in read_file(file, root):
      if doc["id"] in seen:
        raise InputError(f"{file}: document id {doc['id']!r} appears twice in the input")
      seen.add(doc["id"])
      yield doc


def _rank(seed: int, doc_id: str) -> bytes:
  return hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()


def sample_ids(described: list[dict], n: int | None, seed: int) -> set[str] | None:
  """The ids of n documents drawn without replacement, fixed by (seed, ids) alone (not by order
  or input layout): the n smallest sha256(seed, id). None (all documents) when n is None."""
  if n is None:
    return None
  heap: list[tuple[bytes, str]] = []  # max-heap by negated rank via inverted bytes
  for doc in iter_documents(described):
    key = bytes(255 - b for b in _rank(seed, doc["id"]))
    if len(heap) < n:
      heapq.heappush(heap, (key, doc["id"]))
    elif key > heap[0][0]:
      heapq.heapreplace(heap, (key, doc["id"]))
  return {doc_id for _, doc_id in heap}


def sampled_documents(described: list[dict], n: int | None, seed: int) -> Iterator[dict]:
  """iter_documents restricted to sample_ids (in input order)."""
  keep = sample_ids(described, n, seed)
  for doc in iter_documents(described):
    if keep is None or doc["id"] in keep:
      yield doc
