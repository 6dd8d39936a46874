"""How the data stages read their inputs: files, folders and documents, and which items are bad.

Inputs: JSONL documents `{"id", "text", "source", "meta"}` (`.jsonl` / `.jsonl.gz`), `.parquet` files,
`.py` files, folders of `.py` files and folders of JSONL or parquet shards (a stage's output, a corpus
download). A JSONL line's or parquet row's text is under --text_key (default `text`) and its id under
--id_key (default `id`), as datatrove's readers name them: The Stack v1 reads with
`--text_key=content --id_key=hexsha`. Parquet files are read a row group at a time (two columns), so
a big file never loads whole. pack, curate, decontam and the tokenizer read them the same way:
`read_source` for a .py file, `parse_line` for a JSONL line, `parquet_rows` for a row group,
`read_documents` for a whole file, each giving a bad item ("FILE:LINE: why") rather than stopping,
and `check_bad` stops a run past its --max_bad_fraction. `describe_inputs` lists each input's files
with a sha256 for manifests (`fingerprints` adds non-default keys); `work_units` cuts them into chunks
(a parquet row group each) for pack's tokenizer workers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Iterator, Sequence

from phi1_jax.cli import UserError
from phi1_jax.data.tokenizer import file_sha256

JSONL = (".jsonl", ".jsonl.gz")
PARQUET = ".parquet"
TEXT_KEY, ID_KEY = "text", "id"  # the keys of the project's own JSONL documents
UNIT_BYTES = 1 << 18  # work handed to a pack worker at a time
UNIT_LINES = 1024


def add_key_args(parser) -> None:
  """--text_key and --id_key, for every command that reads documents."""
  parser.add_argument(
    "--text_key", default=TEXT_KEY, help="JSONL field / parquet column of the text (The Stack: content)"
  )
  parser.add_argument("--id_key", default=ID_KEY, help="JSONL field / parquet column of the id (The Stack: hexsha)")


def files_of(path: Path, text_key: str = TEXT_KEY) -> list[Path]:
  """An input's files in a fixed order; UserError for a missing path, an unsupported file, a folder
  without inputs or a parquet file without the text column (its footer alone is read)."""
  files = _files_of(path)
  for f in files:
    if f.name.endswith(PARQUET):
      _check_parquet(f, text_key)
  return files


def _files_of(path: Path) -> list[Path]:
  if path.is_dir():  # a folder of .py files, or else of JSONL shards (a stage's output folder)
    # JSONL or parquet shards: not those in hidden folders, where stages keep their bookkeeping (synth's .synth/)
    files = sorted(path.rglob("*.py")) or sorted(
      f
      for f in path.rglob("*")
      if f.name.endswith((*JSONL, PARQUET)) and not any(p.startswith(".") for p in f.relative_to(path).parts)
    )
    if not files:
      raise UserError(f"--input {path}: folder holds no .py, .jsonl, .jsonl.gz or .parquet files")
    return files
  if not path.is_file():
    raise UserError(f"--input {path}: not found")
  if not path.name.endswith((".py", *JSONL, PARQUET)):
    raise UserError(f"--input {path}: unsupported file type (want .py, .jsonl, .jsonl.gz, .parquet or a folder)")
  return [path]


def _check_parquet(f: Path, text_key: str) -> None:
  """UserError unless f is a parquet file with a text column `text_key` (its footer alone is read)."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  try:
    schema = pq.read_schema(f)
  except (OSError, pa.ArrowException) as e:
    raise UserError(f"--input {f}: not a readable parquet file ({e})") from None
  if text_key not in schema.names:
    raise UserError(f"--input {f}: no column {text_key!r} (columns: {', '.join(schema.names)}); see --text_key")
  kind = schema.field(text_key).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
    raise UserError(f"--input {f}: column {text_key!r} holds {kind}, not text; see --text_key")


def describe_inputs(inputs: Sequence[str | os.PathLike], text_key: str = TEXT_KEY, id_key: str = ID_KEY) -> list[dict]:
  """Each input with its files and a sha256 (a folder's covers every file's path and bytes), and
  text_key / id_key where they are not the defaults. A parquet file without the text column fails here."""
  described = []
  for raw in inputs:
    path = Path(raw)
    files = files_of(path, text_key)
    if path.is_dir():
      h = hashlib.sha256()
      for f in files:
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
      sha = h.hexdigest()
    else:
      sha = file_sha256(path)
    described.append(
      {
        "path": str(path.resolve()),
        "sha256": sha,
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        **({"text_key": text_key, "id_key": id_key} if (text_key, id_key) != (TEXT_KEY, ID_KEY) else {}),
        "_files": files,
        "_root": path if path.is_dir() else path.parent,
        "_keys": (text_key, id_key),
      }
    )
  return described


def fingerprints(described: list[dict]) -> list:
  """What of each input a stage's fingerprint holds: its sha256, with the keys when they are not the
  defaults (other keys read other documents from the same bytes)."""
  return [[d["sha256"], *d["_keys"]] if "text_key" in d else d["sha256"] for d in described]


def work_units(described: list[dict]) -> Iterator[tuple]:
  """Chunks of input for the workers: ("jsonl", file, first_line, [lines], bytes on disk, text_key, id_key),
  ("parquet", file, row group, bytes on disk, text_key, id_key) or ("py", [(file, id)])."""
  for inp in described:
    root = inp["_root"]
    keys = inp["_keys"]
    py_batch, py_bytes = [], 0
    for f in inp["_files"]:
      if f.name.endswith(".py"):
        doc_id = f"{root.name}/{f.relative_to(root).as_posix()}"
        py_batch.append((str(f), doc_id))
        py_bytes += f.stat().st_size
        if py_bytes >= UNIT_BYTES:
          yield ("py", py_batch)
          py_batch, py_bytes = [], 0
        continue
      if f.name.endswith(PARQUET):
        start = 0
        for row_group, _, end in parquet_row_groups(f):
          yield ("parquet", str(f), row_group, end - start, *keys)
          start = end
        continue
      for unit in _jsonl_units(f):
        yield (*unit, *keys)
    if py_batch:
      yield ("py", py_batch)


def _jsonl_units(f: Path) -> Iterator[tuple]:
  """The file's lines in units, each with the bytes of the file on disk it took (compressed bytes for
  .gz), so progress counts in the units of the total it is measured against."""
  lineno = 0
  try:
    with open(f, "rb") as raw:
      fh = gzip.GzipFile(fileobj=raw) if f.name.endswith(".gz") else raw
      lines, nbytes, first, read = [], 0, 1, 0
      for lineno, line in enumerate(fh, 1):
        if not lines:
          first = lineno
        lines.append(line)
        nbytes += len(line)
        if nbytes >= UNIT_BYTES or len(lines) >= UNIT_LINES:
          yield ("jsonl", str(f), first, lines, raw.tell() - read)
          lines, nbytes, read = [], 0, raw.tell()
      if lines or read < raw.tell():
        yield ("jsonl", str(f), first, lines, raw.tell() - read)
  except (OSError, EOFError, zlib.error) as e:  # a corrupt or truncated .gz: the whole file is unusable
    raise UserError(f"--input {f}: unreadable after line {lineno} ({e})") from None


def read_source(path: str | os.PathLike) -> tuple[str | None, int, str | None]:
  """How every stage reads a .py file: (text, bytes, None), or (None, bytes, "FILE:LINE: not UTF-8")
  for a bad item that the stage counts and passes over."""
  raw = Path(path).read_bytes()
  try:
    return raw.decode("utf-8"), len(raw), None
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    return None, len(raw), f"{path}:{line}: not UTF-8"


def parse_line(
  line: bytes, file: str | os.PathLike, lineno: int, text_key: str = TEXT_KEY, id_key: str = ID_KEY
) -> tuple[dict | None, str | None]:
  """How every stage reads a JSONL line: (document, None), its "text" a string (maybe blank) and its
  "id" taken from text_key and id_key, or (None, "FILE:LINE: why") for a bad item."""
  try:
    doc = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError:
    return None, f"{file}:{lineno}: not UTF-8"
  except ValueError:
    return None, f"{file}:{lineno}: not valid JSON"
  if not isinstance(doc, dict):
    return None, f"{file}:{lineno}: no text"
  text = doc.get(text_key)
  if not isinstance(text, str):
    return None, f"{file}:{lineno}: no text" if text_key == TEXT_KEY else f"{file}:{lineno}: no {text_key!r}"
  if (text_key, id_key) != (TEXT_KEY, ID_KEY):
    doc = {**doc, "text": text, "id": doc.get(id_key)}
  return doc, None


def parquet_row_groups(file: str | os.PathLike) -> list[tuple[int, int, int]]:
  """(row group, its first row counted from 1, bytes of the file through it) for each row group; the
  last one's end is the file's size, so progress in bytes reaches the total it is measured against."""
  import pyarrow.parquet as pq

  meta = pq.ParquetFile(file).metadata
  groups, first, end = [], 1, 0
  for i in range(meta.num_row_groups):
    group = meta.row_group(i)
    end += sum(group.column(c).total_compressed_size for c in range(group.num_columns))
    groups.append((i, first, end))
    first += group.num_rows
  size = os.path.getsize(file)
  return [(i, first, size if i == len(groups) - 1 else min(end, size)) for i, first, end in groups]


def parquet_rows(
  file: str | os.PathLike, row_group: int, text_key: str = TEXT_KEY, id_key: str = ID_KEY, batch_rows: int = 1024
) -> Iterator[tuple[int, str | None, str | None]]:
  """(row counted from 1 in the file, text or None, id or None) for one row group, read in batches
  of two columns; an id column that is absent gives None (the caller names the row FILE:ROW)."""
  import pyarrow.parquet as pq

  pf = pq.ParquetFile(file)
  has_id = id_key in pf.schema_arrow.names
  row = 1 + sum(pf.metadata.row_group(i).num_rows for i in range(row_group))
  columns = [text_key, id_key] if has_id else [text_key]
  for batch in pf.iter_batches(batch_size=batch_rows, row_groups=[row_group], columns=columns):
    texts = batch.column(0).to_pylist()
    ids = batch.column(1).to_pylist() if has_id else [None] * len(texts)
    for text, doc_id in zip(texts, ids):
      yield row, text, None if doc_id is None else str(doc_id)
      row += 1


def read_documents(
  file: str | os.PathLike, root: str | os.PathLike, bad: list[str], text_key: str = TEXT_KEY, id_key: str = ID_KEY
) -> Iterator[tuple[dict, int]]:
  """(document `{"id", "text", "source", "meta"}`, bytes of the file read so far, compressed bytes for
  .gz) for every non-blank document of one input file. A `.py` file's id is `<folder name>/<path inside
  it>`; a JSONL line or parquet row without an id gets `<file name>:<line or row>`. Bad items go to `bad`."""
  path = Path(file)
  if path.name.endswith(".py"):
    text, size, problem = read_source(path)
    if problem:
      bad.append(problem)
    elif text.strip():
      rel = path.relative_to(root).as_posix()
      yield {"id": f"{Path(root).name}/{rel}", "text": text, "source": Path(root).name, "meta": {"path": rel}}, size
    return
  if path.name.endswith(PARQUET):
    for row_group, _, end in parquet_row_groups(path):
      for row, text, doc_id in parquet_rows(path, row_group, text_key, id_key):
        if text and text.strip():
          yield {"id": doc_id or f"{path.name}:{row}", "text": text, "source": path.name, "meta": {}}, end
    return
  with open(path, "rb") as raw:
    fh = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
    for lineno, line in enumerate(fh, 1):
      if not line.strip():
        continue
      doc, problem = parse_line(line, path, lineno, text_key, id_key)
      if problem:
        bad.append(problem)
        continue
      text = doc["text"]
      if not text.strip():
        continue
      doc_id = doc.get("id")
      meta = doc.get("meta")
      yield (
        {
          "id": doc_id if isinstance(doc_id, str) and doc_id else f"{path.name}:{lineno}",
          "text": text,
          "source": str(doc.get("source") or path.name),
          "meta": meta if isinstance(meta, dict) else {},
        },
        raw.tell(),
      )


def check_bad(bad: list[str], documents: int, max_bad_fraction: float) -> None:
  """UserError when more than max_bad_fraction of the items (documents + bad ones) are bad."""
  items = documents + len(bad)
  if len(bad) > max_bad_fraction * items:
    raise UserError(
      f"{len(bad)} of {items} items are bad ({len(bad) / items:.3%} > --max_bad_fraction "
      f"{max_bad_fraction:.3%}); first: {bad[0]}"
    )
