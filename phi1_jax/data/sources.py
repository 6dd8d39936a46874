"""How the data stages read their inputs: files, folders and documents, and which items are bad.

Inputs: JSONL documents `{"id", "text", "source", "meta"}` (`.jsonl` / `.jsonl.gz`), `.py` files,
folders of `.py` files and folders of JSONL shards (a stage's output). pack, curate and decontam
read them the same way: `read_source` for a .py file, `parse_line` for a JSONL line, each giving
a bad item ("FILE:LINE: why") rather than stopping, and `check_bad` stops a run past its
--max_bad_fraction. `describe_inputs` lists each input's files with a sha256 for manifests;
`work_units` cuts them into chunks for pack's tokenizer workers.
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
UNIT_BYTES = 1 << 18  # work handed to a pack worker at a time
UNIT_LINES = 1024


def _input_files(path: Path) -> list[Path]:
  if path.is_dir():  # a folder of .py files, or else of JSONL shards (a stage's output folder)
    # JSONL shards: not those in hidden folders, where stages keep their bookkeeping (synth's .synth/)
    files = sorted(path.rglob("*.py")) or sorted(
      f
      for f in path.rglob("*.jsonl*")
      if f.name.endswith(JSONL) and not any(p.startswith(".") for p in f.relative_to(path).parts)
    )
    if not files:
      raise UserError(f"--input {path}: folder holds no .py, .jsonl or .jsonl.gz files")
    return files
  if not path.is_file():
    raise UserError(f"--input {path}: not found")
  if not path.name.endswith((".py", *JSONL)):
    raise UserError(f"--input {path}: unsupported file type (want .py, .jsonl, .jsonl.gz or a folder)")
  return [path]


def describe_inputs(inputs: Sequence[str | os.PathLike]) -> list[dict]:
  """Each input with its files and a sha256 (a folder's covers every file's path and bytes)."""
  described = []
  for raw in inputs:
    path = Path(raw)
    files = _input_files(path)
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
        "_files": files,
        "_root": path if path.is_dir() else path.parent,
      }
    )
  return described


def work_units(described: list[dict]) -> Iterator[tuple]:
  """Chunks of input for the workers: ("jsonl", file, first_line, [lines], bytes on disk) or ("py", [(file, id)])."""
  for inp in described:
    root = inp["_root"]
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
      yield from _jsonl_units(f)
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


def parse_line(line: bytes, file: str | os.PathLike, lineno: int) -> tuple[dict | None, str | None]:
  """How every stage reads a JSONL line: (document, None), its "text" a string (maybe blank), or
  (None, "FILE:LINE: why") for a bad item."""
  try:
    doc = json.loads(line.decode("utf-8"))
  except UnicodeDecodeError:
    return None, f"{file}:{lineno}: not UTF-8"
  except ValueError:
    return None, f"{file}:{lineno}: not valid JSON"
  if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
    return None, f"{file}:{lineno}: no text"
  return doc, None


def check_bad(bad: list[str], documents: int, max_bad_fraction: float) -> None:
  """UserError when more than max_bad_fraction of the items (documents + bad ones) are bad."""
  items = documents + len(bad)
  if len(bad) > max_bad_fraction * items:
    raise UserError(
      f"{len(bad)} of {items} items are bad ({len(bad) / items:.3%} > --max_bad_fraction "
      f"{max_bad_fraction:.3%}); first: {bad[0]}"
    )
