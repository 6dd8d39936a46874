"""The embedded default corpus: the running interpreter's Python standard library.

`ensure_stdlib_data(cache_dir, vocab_size, seq_len)` builds (first call) or reuses (later calls) a
SentencePiece tokenizer and packed shards of the stdlib's .py files, so a CPU demo needs no
downloads. Layout under cache_dir, keyed by every setting so different settings never clash:

  stdlib-v3-py3.11-<max_bytes>/corpus.jsonl                         the capped corpus, one file a line
  stdlib-v3-py3.11-<max_bytes>/tok-v<vocab>-s<sentences>/           tokenizer.model + manifest.json
  stdlib-v3-py3.11-<max_bytes>/tok-v<vocab>-s<sentences>/L<seq_len>-eval<fraction>/  packed shards

Generated tables (charmap codecs, modules that are mostly literals: `is_generated_table`) are left
out. 10% of the files, chosen by a hash of their path, are the held-out split. The tokenizer trains
on a uniform sample of `tokenizer_sentences` 8-line chunks of the corpus.
Safe for several processes at once (the processes of a multi-process run, parallel sweeps): an
exclusive `flock` on `<cache folder>/.build.lock` lets one build while the others wait, then find
it built. (flock works across processes on one machine; on a shared network filesystem build the
cache once before starting many hosts.)
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import sys
import tokenize
from pathlib import Path

from phi1_jax.data.pack import pack
from phi1_jax.data.tokenizer import SPM_FILE, train_tokenizer

CACHE_VERSION = "v3"  # bump when the corpus, tokenizer or packing changes, so old caches are not reused
DEFAULT_MAX_BYTES = 8_000_000  # ~2.5M tokens: packs in well under a minute on 2 cores
DEFAULT_TOKENIZER_SENTENCES = 8_000  # ~2 MB of 8-line chunks: trains in seconds
# 10% held out: 57 of 558 files on Python 3.11, whose loss tracks the training loss (1% was 11
# files, most of their text four codec tables, so the eval loss measured those tables).
DEFAULT_EVAL_FRACTION = 0.1
MAX_LITERAL_FRACTION = 0.7


def stdlib_dir() -> Path:
  return Path(os.__file__).resolve().parent


def literal_fraction(text: str) -> float:
  """The share of a module's code characters that are string or number literals. Comments,
  whitespace and docstrings (strings standing as statements) count as neither. Mostly under 0.3
  for library code; over 0.7 for data tables (pydoc_data/topics.py, html/entities.py,
  _sysconfigdata_*.py)."""
  literal_types = {tokenize.STRING, tokenize.NUMBER, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
  layout = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
    tokenize.ENCODING,
  }
  literal = code = 0
  statement_start = True
  try:
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
      if tok.type in layout:
        statement_start = statement_start or tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        continue
      code += len(tok.string)
      if tok.type in literal_types and not (tok.type == tokenize.STRING and statement_start):
        literal += len(tok.string)
      statement_start = False
  except (tokenize.TokenError, SyntaxError):
    return 0.0  # not Python this tokenizer reads (e.g. lib2to3 test data); judged as code
  return literal / max(code, 1)


def is_generated_table(rel: Path, text: str) -> bool:
  """Machine-generated tables, which a code model should not spend its budget (or its eval loss)
  on: the charmap codecs made by gencodec.py (encodings/cp1252.py and ~70 like it: a 256-entry
  table each) and modules that are mostly literals."""
  if rel.parts[0] == "encodings" and ("charmap_build(" in text or "decoding_map" in text):
    return True
  return literal_fraction(text) > MAX_LITERAL_FRACTION


def stdlib_files(max_bytes: int = DEFAULT_MAX_BYTES) -> list[Path]:
  """UTF-8, non-empty stdlib .py files that are not generated tables, library code before tests,
  capped at max_bytes in total.

  The order (then the cap) is fixed by relative path, so the corpus is the same on every call.
  """
  root = stdlib_dir()
  candidates = []
  for f in root.rglob("*.py"):
    rel = f.relative_to(root)
    if rel.parts[0] in ("site-packages", "dist-packages"):
      continue
    is_test = any(p in ("test", "tests", "idle_test") or p.startswith("test_") for p in rel.parts)
    candidates.append((is_test, rel.as_posix(), f))
  chosen, total = [], 0
  for _, _, f in sorted(candidates):
    size = f.stat().st_size
    if size == 0 or total + size > max_bytes:
      continue
    try:
      text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
      continue  # a few test files are Latin-1 on purpose
    if text.strip() and not is_generated_table(f.relative_to(root), text):
      chosen.append(f)
      total += size
  return chosen


def write_corpus(files: list[Path], path: Path) -> None:
  """One JSONL document per file; written to a temp name and renamed, so it is whole or absent."""
  root = stdlib_dir()
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as fh:
    for f in files:
      rel = f.relative_to(root).as_posix()
      doc = {
        "id": f"stdlib/{rel}",
        "text": f.read_text(encoding="utf-8"),
        "source": "python-stdlib",
        "meta": {"path": rel, "python": sys.version.split()[0]},
      }
      fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def ensure_stdlib_data(
  cache_dir: str | os.PathLike,
  vocab_size: int,
  seq_len: int,
  max_bytes: int = DEFAULT_MAX_BYTES,
  tokenizer_sentences: int = DEFAULT_TOKENIZER_SENTENCES,
  eval_fraction: float = DEFAULT_EVAL_FRACTION,
  workers: int = 2,
) -> tuple[str, str]:
  """Returns (tokenizer_dir, data_dir) for the stdlib corpus, building what is missing."""
  version = f"py{sys.version_info.major}.{sys.version_info.minor}"
  base = Path(cache_dir) / f"stdlib-{CACHE_VERSION}-{version}-{max_bytes}"
  tok_dir = base / f"tok-v{vocab_size}-s{tokenizer_sentences}"
  data_dir = tok_dir / f"L{seq_len}-eval{eval_fraction}"
  if (data_dir / "manifest.json").is_file():  # pack renames a finished folder into place: complete
    return str(tok_dir), str(data_dir)
  base.mkdir(parents=True, exist_ok=True)
  with _build_lock(base):
    return _ensure_built(base, max_bytes, vocab_size, seq_len, tokenizer_sentences, eval_fraction, workers)


@contextlib.contextmanager
def _build_lock(base: Path):
  """Holds an exclusive lock on base/.build.lock: one builder per cache folder at a time."""
  with open(base / ".build.lock", "a") as fh:
    try:
      fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"{base}: another process is building it; waiting", file=sys.stderr, flush=True)
      fcntl.flock(fh, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure_built(
  base: Path,
  max_bytes: int,
  vocab_size: int,
  seq_len: int,
  tokenizer_sentences: int,
  eval_fraction: float,
  workers: int,
) -> tuple[str, str]:
  corpus = base / "corpus.jsonl"
  if not corpus.is_file():
    write_corpus(stdlib_files(max_bytes), corpus)

  tok_dir = base / f"tok-v{vocab_size}-s{tokenizer_sentences}"
  if not (tok_dir / SPM_FILE).is_file():
    train_tokenizer([corpus], vocab_size, tok_dir, max_sentences=tokenizer_sentences)

  data_dir = tok_dir / f"L{seq_len}-eval{eval_fraction}"
  if (data_dir / "manifest.json").is_file():  # another process built it while this one waited
    return str(tok_dir), str(data_dir)
  pack([corpus], tok_dir, seq_len, data_dir, eval_fraction=eval_fraction, workers=workers)  # no-op once built
  return str(tok_dir), str(data_dir)
