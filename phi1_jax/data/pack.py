"""Pack documents into fixed-length token records (ArrayRecord shards + manifest.json).

    python -m phi1_jax.data.pack --input PATH [PATH ...] --tokenizer DIR --seq_len 2048 --out DIR \
        [--eval_fraction 0.01] [--max_bad_fraction 0.001] [--workers 2] [--text_key text --id_key id]

Inputs: JSONL documents `{"id", "text", "source", "meta"}` (`.jsonl` / `.jsonl.gz`), `.parquet` files
(read a row group per work unit; The Stack v1: `--text_key=content --id_key=hexsha`), `.py` files,
folders of `.py` files and folders of JSONL or parquet shards (a stage's output, e.g. decontam's
OUT/clean/code); phi1_jax.data.sources reads them.
Each split is ONE token stream, documents joined by `<|endoftext|>`
(between documents, as in the paper), cut into records of `seq_len + 1` int32 tokens:
record i = stream[i*seq_len : i*seq_len + seq_len + 1], so every token is a target exactly once
(the trainer feeds tokens[:-1] and predicts tokens[1:]); the tail shorter than a record is dropped.

On disk (`--out`):
  train-00000-of-0000N.array_record, eval-00000-of-0000M.array_record
      each record = seq_len + 1 little-endian int32 tokens as raw bytes (group_size:1, so
      `grain.sources.ArrayRecordDataSource` reads records at random cheaply);
  manifest.json: format, seq_len, tokenizer (path, sha256, vocab_size, eos_id), inputs with sha256,
      per split documents / tokens / records / shards, skipped empty documents, bad items, flags,
      fingerprint.

Documents whose text is empty or only whitespace (an empty `__init__.py`, a JSONL row with
"text": "", a parquet row whose text is null or empty) are skipped and counted (`skipped_empty`), not bad. Bad items (a line that is not
JSON or not UTF-8, a row without a "text" string, a .py file that is not UTF-8) are reported; more
than --max_bad_fraction of them (of documents + bad items) stops the run.

The eval split holds whole documents chosen by a hash of the document id (JSONL "id", else
file:line; a .py file's path inside its input folder); a document is held out when its hash,
read as a number in [0, 1), is below the threshold (start: --eval_fraction). If that gives no eval
record, the threshold is raised just enough for one (documents in hash order) and the data is
packed again, so any input big enough for two records has an eval record (--eval_fraction 0: none).

Runs are idempotent and safe to kill: output is written to a sibling `.NAME.partial` folder and
renamed to --out only when complete (a killed run is restarted from scratch on the next call); a
finished --out whose manifest fingerprint matches is left alone; --out holding anything else is
never overwritten.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import tqdm
from array_record.python.array_record_module import ArrayRecordWriter

from phi1_jax import cli
from phi1_jax.cli import out_dir_problem
from phi1_jax.data import sources
from phi1_jax.data.sources import check_bad, describe_inputs, parse_line, parquet_rows, read_source, work_units
from phi1_jax.data.tokenizer import file_sha256, load_tokenizer, tokenizer_file

FORMAT = "phi1_jax.packed/v1"
SPLITS = ("train", "eval")
RECORDS_PER_SHARD = 32768  # 256 MiB shards at seq_len 2048
_MAX_REPORTED_BAD = 1000


class PackError(cli.UserError):
  """A user error: bad flag, unusable output folder (the inputs' errors are sources' UserErrors)."""


# ---------------------------------------------------------------- workers

_worker_tokenizer = None


def _init_worker(tokenizer_path: str) -> None:
  global _worker_tokenizer
  _worker_tokenizer = load_tokenizer(tokenizer_path)


def _init_pool_worker(tokenizer_path: str) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops and kills us
  _init_worker(tokenizer_path)


def split_hash(doc_id: str) -> float:
  """A document's place in [0, 1): fixed by its id, so the split never depends on order or workers."""
  return int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2.0**64


def _process_unit(unit: tuple) -> dict:
  """Parses and tokenizes one unit. Returns docs [(hash, tokens)], bad items, skipped empty docs, blank
  lines, bytes."""
  docs_meta, texts, bad, skipped, blank, nbytes = [], [], [], 0, 0, 0
  if unit[0] == "py":
    for file, doc_id in unit[1]:
      text, size, problem = read_source(file)
      nbytes += size
      if problem:
        bad.append(problem)
        continue
      if not text.strip():
        skipped += 1  # empty __init__.py files are normal, not errors
        continue
      docs_meta.append(split_hash(doc_id))
      texts.append(text)
  elif unit[0] == "parquet":
    _, file, row_group, nbytes, text_key, id_key = unit
    for row, text, doc_id in parquet_rows(file, row_group, text_key, id_key):
      if not text or not text.strip():
        skipped += 1  # a null or empty text, counted as an empty JSONL document is
        continue
      docs_meta.append(split_hash(doc_id or f"{Path(file).name}:{row}"))
      texts.append(text)
  else:
    _, file, first, lines, nbytes, text_key, id_key = unit
    for lineno, line in enumerate(lines, first):
      if not line.strip():
        blank += 1
        continue
      doc, problem = parse_line(line, file, lineno, text_key, id_key)
      if problem:
        bad.append(problem)
        continue
      text = doc["text"]
      if not text.strip():
        skipped += 1  # an empty document (e.g. an empty __init__.py), skipped as in a folder
        continue
      doc_id = doc.get("id")
      docs_meta.append(split_hash(doc_id if isinstance(doc_id, str) and doc_id else f"{Path(file).name}:{lineno}"))
      texts.append(text)
  ids = _worker_tokenizer.encode_batch(texts)
  docs = [(h, np.asarray(t, dtype=np.int32)) for h, t in zip(docs_meta, ids)]
  return {"docs": docs, "bad": bad, "skipped": skipped, "blank": blank, "bytes": nbytes}


def _ordered_results(units: Iterator[tuple], tokenizer_path: str, workers: int) -> Iterator[dict]:
  """`_process_unit` over units, in order, at most 4 units per worker in flight (bounded memory)."""
  if workers == 1:
    _init_worker(tokenizer_path)
    yield from map(_process_unit, units)
    return
  # spawn, not fork: the caller may be a JAX process, and forking one is unsafe. An executor,
  # not a Pool: a worker that dies or cannot start raises BrokenProcessPool instead of hanging.
  ctx = multiprocessing.get_context("spawn")
  # Ctrl-C reaches the whole process group, workers still importing included: they are started
  # with SIGINT ignored, a disposition that a spawned interpreter keeps from its first instruction,
  # so none prints a traceback (the parent stops and kills them). A Ctrl-C in the milliseconds
  # the starts take is ignored; the next one stops the run.
  in_main_thread = threading.current_thread() is threading.main_thread()  # where signal.signal may be called
  handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
  try:
    pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=_init_pool_worker, initargs=(tokenizer_path,)
    )
    for _ in range(workers):  # back to back: each submit starts a worker now
      pool.submit(int)
  finally:
    if in_main_thread:
      signal.signal(signal.SIGINT, handler)
  with pool:
    pending = collections.deque()
    try:
      for unit in units:
        pending.append(pool.submit(_process_unit, unit))
        if len(pending) >= 4 * workers:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
    except concurrent.futures.process.BrokenProcessPool:
      raise PackError(
        "a worker process died or could not start (out of memory? a script read from stdin?); rerun with --workers 1"
      ) from None
    finally:
      for f in pending:
        f.cancel()


# ---------------------------------------------------------------- writing


class SplitWriter:
  """One split's token stream cut into records of seq_len + 1 tokens, written to shards."""

  def __init__(self, out: Path, split: str, seq_len: int, eos_id: int, records_per_shard: int):
    self.out, self.split, self.seq_len, self.records_per_shard = out, split, seq_len, records_per_shard
    self.separator = np.array([eos_id], dtype=np.int32)
    self.pending = np.zeros(0, dtype=np.int32)  # stream from the next record's first token on
    self.documents = self.tokens = self.records = 0
    self.shards: list[Path] = []
    self._writer = None
    self._in_shard = 0

  def add(self, tokens: np.ndarray) -> None:
    parts = [self.pending, self.separator, tokens] if self.documents else [self.pending, tokens]
    self.tokens += len(tokens) + (1 if self.documents else 0)
    self.documents += 1
    self.pending = np.concatenate(parts)
    record_len = self.seq_len + 1
    start = 0
    while len(self.pending) - start >= record_len:
      self._write(self.pending[start : start + record_len])
      start += self.seq_len  # the last token of a record is the first of the next
    self.pending = self.pending[start:]

  def _write(self, record: np.ndarray) -> None:
    if self._writer is None or self._in_shard == self.records_per_shard:
      self._close_shard()
      path = self.out / f"{self.split}-{len(self.shards):05d}.array_record.part"
      self.shards.append(path)
      self._writer = ArrayRecordWriter(str(path), "group_size:1")
    self._writer.write(record.astype("<i4").tobytes())
    self._in_shard += 1
    self.records += 1

  def _close_shard(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer, self._in_shard = None, 0

  def finish(self) -> dict:
    """Closes the last shard, gives shards their final `-of-N` names, returns the split's counts."""
    self._close_shard()
    names = []
    for i, part in enumerate(self.shards):
      name = f"{self.split}-{i:05d}-of-{len(self.shards):05d}.array_record"
      os.replace(part, self.out / name)
      names.append(name)
    used = self.records * self.seq_len + 1 if self.records else 0
    return {
      "documents": self.documents,
      "tokens": self.tokens,
      "records": self.records,
      "dropped_tail_tokens": self.tokens - used,
      "shards": names,
    }


class _LogLines:
  """tqdm's update() as a plain line every `every` seconds, for logs that are not terminals."""

  def __init__(self, total: int, desc: str, every: float = 30.0):
    self.total, self.desc, self.every, self.done = total, desc, every, 0
    self.start = self.last = time.time()

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if now - self.last >= self.every or self.done >= self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / rate if rate else float("inf")
      print(
        f"{self.desc}: {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB "
        f"({self.done / max(self.total, 1):.0%}), {rate / 1e6:.2f} MB/s, ETA {eta:.0f}s",
        file=sys.stderr,
        flush=True,
      )

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def _progress(total_bytes: int, desc: str):
  """A tqdm bar (rate, ETA) on a terminal, periodic lines otherwise; both on stderr."""
  if sys.stderr.isatty():
    return tqdm.tqdm(total=total_bytes, unit="B", unit_scale=True, desc=desc, file=sys.stderr, mininterval=1.0)
  return _LogLines(total_bytes, desc)


def _write_splits(
  described, tokenizer_path, eos_id, seq_len, threshold, out, workers, records_per_shard, progress_desc
):
  """One pass: tokenizes everything, writes both splits. Returns counts and every doc's (hash, tokens)."""
  writers = {s: SplitWriter(out, s, seq_len, eos_id, records_per_shard) for s in SPLITS}
  bad, skipped, doc_hashes, doc_lengths = [], collections.Counter(), [], []
  total_bytes = sum(inp["bytes"] for inp in described)
  with _progress(total_bytes, progress_desc) as bar:
    for result in _ordered_results(work_units(described), tokenizer_path, workers):
      for h, tokens in result["docs"]:
        writers["eval" if h < threshold else "train"].add(tokens)
        doc_hashes.append(h)
        doc_lengths.append(len(tokens))
      for item in result["bad"]:
        if len(bad) < 20:
          print(f"warning: bad item {item}", file=sys.stderr)
        bad.append(item)
      skipped.update(empty_documents=result["skipped"], blank_lines=result["blank"])
      bar.update(result["bytes"])
  splits = {s: w.finish() for s, w in writers.items()}
  return splits, bad, skipped, np.array(doc_hashes), np.array(doc_lengths, dtype=np.int64)


def _threshold_for_one_record(hashes: np.ndarray, lengths: np.ndarray, seq_len: int) -> float | None:
  """Smallest hash threshold whose documents make a stream of >= seq_len + 1 tokens."""
  order = np.argsort(hashes, kind="stable")
  stream = np.cumsum(lengths[order] + 1) - 1  # documents plus separators between them
  k = int(np.searchsorted(stream, seq_len + 1))
  if k >= len(order):
    return None
  return float(np.nextafter(hashes[order[k]], 1.0))


# ---------------------------------------------------------------- driver


def _check_flags(inputs, seq_len, eval_fraction, max_bad_fraction, workers) -> None:
  if not inputs:
    raise PackError("--input: give at least one path")
  if seq_len < 1:
    raise PackError(f"--seq_len {seq_len}: must be >= 1")
  if not 0.0 <= eval_fraction < 1.0:
    raise PackError(f"--eval_fraction {eval_fraction}: must be in [0, 1)")
  if not 0.0 <= max_bad_fraction <= 1.0:
    raise PackError(f"--max_bad_fraction {max_bad_fraction}: must be in [0, 1]")
  if workers < 1:
    raise PackError(f"--workers {workers}: must be >= 1")


def read_existing_manifest(out: Path) -> dict | None:
  path = out / "manifest.json"
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    raise PackError(f"{path}: not valid JSON; refusing to touch {out}") from None


def pack(
  inputs: Sequence[str | os.PathLike],
  tokenizer_path: str | os.PathLike,
  seq_len: int,
  out_dir: str | os.PathLike,
  *,
  eval_fraction: float = 0.01,
  max_bad_fraction: float = 0.001,
  workers: int = 2,
  records_per_shard: int = RECORDS_PER_SHARD,
  text_key: str = sources.TEXT_KEY,
  id_key: str = sources.ID_KEY,
) -> dict:
  """Packs `inputs` into `out_dir` (see module docstring) and returns the manifest."""
  start = time.time()
  _check_flags(inputs, seq_len, eval_fraction, max_bad_fraction, workers)
  if records_per_shard < 1:
    raise PackError(f"records_per_shard {records_per_shard}: must be >= 1")
  try:
    tok_file = tokenizer_file(tokenizer_path)
    tok = load_tokenizer(tok_file)
  except (FileNotFoundError, ValueError) as e:
    raise PackError(f"--tokenizer: {e}") from None
  described = describe_inputs(inputs, text_key, id_key)
  tokenizer_info = {
    "path": str(tok_file.resolve()),
    "sha256": file_sha256(tok_file),
    "vocab_size": tok.vocab_size,
    "eos_id": tok.eos_id,
  }
  # Only what changes the output goes into the fingerprint (not workers, not max_bad_fraction).
  fingerprint = hashlib.sha256(
    json.dumps(
      {
        "format": FORMAT,
        "inputs": sources.fingerprints(described),
        "tokenizer": tokenizer_info["sha256"],
        "seq_len": seq_len,
        "eval_fraction": eval_fraction,
        "records_per_shard": records_per_shard,
      },
      sort_keys=True,
    ).encode()
  ).hexdigest()

  out = Path(out_dir)
  problem = out_dir_problem(out)
  if problem:
    raise PackError(f"--out {out}: {problem}")
  existing = read_existing_manifest(out)
  if existing is not None:
    if existing.get("fingerprint") == fingerprint:
      print(f"{out}: already packed from these inputs, tokenizer and flags; nothing to do", file=sys.stderr)
      return existing
    raise PackError(
      f"{out}: holds data packed from different inputs/tokenizer/flags; choose another --out or delete it"
    )
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise PackError(f"{out}: exists, is not empty and has no manifest.json; refusing to overwrite")

  partial = out.parent / f".{out.name}.partial"
  if partial.exists():
    shutil.rmtree(partial)  # left by a killed run; ours by name, never the user's --out
  partial.mkdir(parents=True)

  try:
    threshold = eval_fraction
    splits, bad, skipped, hashes, lengths = _write_splits(
      described, str(tok_file), tok.eos_id, seq_len, threshold, partial, workers, records_per_shard, "pack"
    )
    items = len(hashes) + len(bad)
    if items == 0:
      raise PackError(
        f"--input: no documents found in {[str(i) for i in inputs]} ({skipped['empty_documents']} empty ones skipped)"
      )
    check_bad(bad, len(hashes), max_bad_fraction)
    if eval_fraction > 0 and splits["eval"]["records"] == 0:
      threshold = _threshold_for_one_record(hashes, lengths, seq_len)
      eval_tokens = 0 if threshold is None else int(lengths[hashes < threshold].sum())
      train_tokens = int(lengths.sum()) - eval_tokens
      if threshold is None or train_tokens < seq_len + 1:
        raise PackError(
          f"inputs hold {int(lengths.sum())} tokens: too few for one train and one eval "
          f"record of seq_len+1={seq_len + 1} tokens; lower --seq_len or add data"
        )
      print(
        f"eval split empty at --eval_fraction {eval_fraction}; holding out documents with hash < "
        f"{threshold:.6f} for one eval record and packing again",
        file=sys.stderr,
      )
      shutil.rmtree(partial)  # the first pass's shards
      partial.mkdir()
      splits, bad, skipped, hashes, lengths = _write_splits(
        described, str(tok_file), tok.eos_id, seq_len, threshold, partial, workers, records_per_shard, "pack again"
      )
    if splits["train"]["records"] == 0:
      raise PackError(
        f"train split has {splits['train']['tokens']} tokens: too few for one record of "
        f"seq_len+1={seq_len + 1}; lower --seq_len or add data"
      )
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)  # nothing half-built survives an error
    raise

  manifest = {
    "format": FORMAT,
    "fingerprint": fingerprint,
    "seq_len": seq_len,
    "record_len": seq_len + 1,
    "dtype": "int32",
    "byte_order": "little",
    "separator": "<|endoftext|> between documents",
    "tokenizer": tokenizer_info,
    "inputs": [{k: v for k, v in i.items() if not k.startswith("_")} for i in described],
    "documents": int(len(hashes)),
    "tokens": int(sum(s["tokens"] for s in splits.values())),
    "records": {s: splits[s]["records"] for s in SPLITS},
    "splits": splits,
    "eval_hash_threshold": threshold,
    "skipped_empty": skipped["empty_documents"],  # documents whose text is empty or only whitespace
    "skipped_blank_lines": skipped["blank_lines"],  # blank lines of JSONL files
    "bad": {"count": len(bad), "items": bad[:_MAX_REPORTED_BAD]},
    "flags": {
      "seq_len": seq_len,
      "eval_fraction": eval_fraction,
      "max_bad_fraction": max_bad_fraction,
      "workers": workers,
      "records_per_shard": records_per_shard,
    },
    "seconds": round(time.time() - start, 2),
  }
  (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
  if out.exists():
    out.rmdir()  # checked empty above
  out.parent.mkdir(parents=True, exist_ok=True)
  os.rename(partial, out)  # the output appears complete or not at all
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.OneLineParser(prog="python -m phi1_jax.data.pack", description=__doc__.split("\n")[0])
  parser.add_argument("--input", nargs="+", required=True, help="JSONL(.gz), .parquet, .py files, folders of them")
  sources.add_key_args(parser)
  parser.add_argument("--tokenizer", required=True, help="folder with tokenizer.model or tokenizer.json")
  parser.add_argument("--seq_len", type=int, required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--eval_fraction", type=float, default=0.01, help="share of documents held out (by id hash)")
  parser.add_argument(
    "--max_bad_fraction",
    type=float,
    default=0.001,
    help="stop if more than this share of items is bad (not JSON/UTF-8, no text); empty documents are skipped, not bad",
  )
  parser.add_argument("--workers", type=int, default=2, help="tokenizer processes")
  args = parser.parse_args(argv)
  try:
    m = pack(
      args.input,
      args.tokenizer,
      args.seq_len,
      args.out,
      eval_fraction=args.eval_fraction,
      max_bad_fraction=args.max_bad_fraction,
      workers=args.workers,
      text_key=args.text_key,
      id_key=args.id_key,
    )
  except cli.UserError as e:
    return cli.report_error(parser.prog, e)
  r = m["records"]
  print(
    f"{args.out}: {m['documents']} documents, {m['tokens']} tokens, {r['train']} train + "
    f"{r['eval']} eval records of {m['record_len']} tokens, {m['skipped_empty']} empty documents skipped, "
    f"{m['bad']['count']} bad items"
  )
  return 0


if __name__ == "__main__":
  sys.exit(cli.run_command(main, kept="nothing is kept (a stopped pack starts again)"))
