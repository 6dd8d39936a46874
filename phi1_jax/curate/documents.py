"""Reading curation inputs as pack reads them, and a deterministic sample of them.

Inputs: JSONL documents `{"id", "text", "source", "meta"}` (`.jsonl` / `.jsonl.gz`), `.parquet` files
(--text_key / --id_key name their columns), `.py` files and folders of them, read by
phi1_jax.data.sources. A `.py` file's id is `<folder name>/<path inside it>` (as pack names it); a
JSONL line or parquet row without an id gets `<file name>:<line or row>`. Blank documents (and parquet
rows whose text is null) are skipped, and bad items (not UTF-8, not JSON, no text) counted and passed
over up to --max_bad_fraction, as pack does.
"""

from __future__ import annotations

import hashlib
import heapq
from typing import Iterator

from phi1_jax.cli import UserError
from phi1_jax.data import sources


def public(described: list[dict]) -> list[dict]:
  """The manifest view of sources.describe_inputs (no private file lists)."""
  return [{k: v for k, v in d.items() if not k.startswith("_")} for d in described]


def input_files(described: list[dict]) -> list[tuple[str, str, str, str]]:
  """(file, root, text_key, id_key) for every file of every input, in a fixed order."""
  return [(str(f), str(d["_root"]), *d["_keys"]) for d in described for f in d["_files"]]


def read_file_offsets(
  file: str, root: str, text_key: str = "text", id_key: str = "id", bad: list[str] | None = None
) -> Iterator[tuple[dict, int]]:
  """(document, bytes of the file read so far, compressed bytes for .gz) for progress and ETA.

  A bad item (a .py file or line not UTF-8, a line not JSON or without text) is read as pack reads
  it: appended to `bad` (if given) and passed over."""
  return sources.read_documents(file, root, [] if bad is None else bad, text_key, id_key)


def iter_documents(described: list[dict], bad: list[str] | None = None) -> Iterator[dict]:
  """Every document of every input, in a fixed order; a repeated id is an error. Bad items go to `bad`."""
  seen = set()
  for file, root, text_key, id_key in input_files(described):
    for doc, _ in read_file_offsets(file, root, text_key, id_key, bad):
      if doc["id"] in seen:
        raise UserError(f"{file}: document id {doc['id']!r} appears twice in the input")
      seen.add(doc["id"])
      yield doc


def check_bad(bad: list[str], documents: int, max_bad_fraction: float, log=print) -> None:
  """Reports the bad items (the first few, and their count); UserError past --max_bad_fraction."""
  for item in bad[:3]:
    log(f"warning: bad item {item}")
  if len(bad) > 3:
    log(f"warning: {len(bad) - 3} more bad items")
  sources.check_bad(bad, documents, max_bad_fraction)


def _rank(seed: int, doc_id: str) -> bytes:
  return hashlib.sha256(f"{seed}\0{doc_id}".encode()).digest()


def sample_ids(described: list[dict], n: int | None, seed: int, bad: list[str] | None = None) -> set[str] | None:
  """The ids of n documents drawn without replacement, fixed by (seed, ids) alone (not by order
  or input layout): the n smallest sha256(seed, id). None (all documents) when n is None."""
  if n is None:
    return None
  heap: list[tuple[bytes, str]] = []  # max-heap by negated rank via inverted bytes
  for doc in iter_documents(described, bad):
    key = bytes(255 - b for b in _rank(seed, doc["id"]))
    if len(heap) < n:
      heapq.heappush(heap, (key, doc["id"]))
    elif key > heap[0][0]:
      heapq.heapreplace(heap, (key, doc["id"]))
  return {doc_id for _, doc_id in heap}


def sampled_documents(
  described: list[dict], n: int | None, seed: int, bad: list[str] | None = None, counted: list[int] | None = None
) -> Iterator[dict]:
  """iter_documents restricted to sample_ids (in input order). Every input's bad items go to `bad`
  once, and its number of documents (sampled or not) to `counted`, for check_bad."""
  keep = sample_ids(described, n, seed, bad)
  n_all = 0
  for doc in iter_documents(described, bad if keep is None else None):
    n_all += 1
    if keep is None or doc["id"] in keep:
      yield doc
  if counted is not None:
    counted.append(n_all)
