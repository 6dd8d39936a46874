"""The embedded default corpus: the running interpreter's Python standard library.

`ensure_stdlib_data(cache_dir, vocab_size, seq_len)` builds (first call) or reuses (later calls) a
SentencePiece tokenizer and packed shards of the stdlib's .py files, so a CPU demo needs no
downloads. Layout under cache_dir, keyed by every setting so different settings never clash:

  stdlib-v2-py3.11-<max_bytes>/corpus.jsonl                         the capped corpus, one file a line
  stdlib-v2-py3.11-<max_bytes>/tok-v<vocab>-s<sentences>/           tokenizer.model + manifest.json
  stdlib-v2-py3.11-<max_bytes>/tok-v<vocab>-s<sentences>/L<seq_len>-eval<fraction>/  packed shards

The tokenizer trains on a uniform sample of `tokenizer_sentences` 8-line chunks of the corpus.
Not safe for several processes building the same cache at once: build it once, then share it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from phi1_jax.data.pack import pack
from phi1_jax.data.tokenizer import SPM_FILE, train_tokenizer

CACHE_VERSION = "v2"  # bump when the tokenizer or packing changes, so old caches are not reused
DEFAULT_MAX_BYTES = 8_000_000  # ~2.5M tokens: packs in well under a minute on 2 cores
DEFAULT_TOKENIZER_SENTENCES = 8_000  # ~2 MB of 8-line chunks: trains in seconds


def stdlib_dir() -> Path:
  return Path(os.__file__).resolve().parent


def stdlib_files(max_bytes: int = DEFAULT_MAX_BYTES) -> list[Path]:
  """UTF-8, non-empty stdlib .py files, library code before tests, capped at max_bytes in total.

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
    if text.strip():
      chosen.append(f)
      total += size
  return chosen


def _write_corpus(files: list[Path], path: Path) -> None:
  """One JSONL document per file; written to a temp name and renamed, so it is whole or absent."""
  root = stdlib_dir()
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", encoding="utf-8") as fh:
    for f in files:
      rel = f.relative_to(root).as_posix()
      doc = {"id": f"stdlib/{rel}", "text": f.read_text(encoding="utf-8"), "source": "python-stdlib",
             "meta": {"path": rel, "python": sys.version.split()[0]}}
      fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def ensure_stdlib_data(
    cache_dir: str | os.PathLike,
    vocab_size: int,
    seq_len: int,
    max_bytes: int = DEFAULT_MAX_BYTES,
    tokenizer_sentences: int = DEFAULT_TOKENIZER_SENTENCES,
    eval_fraction: float = 0.01,
    workers: int = 2,
) -> tuple[str, str]:
  """Returns (tokenizer_dir, data_dir) for the stdlib corpus, building what is missing."""
  version = f"py{sys.version_info.major}.{sys.version_info.minor}"
  base = Path(cache_dir) / f"stdlib-{CACHE_VERSION}-{version}-{max_bytes}"
  base.mkdir(parents=True, exist_ok=True)
  corpus = base / "corpus.jsonl"
  if not corpus.is_file():
    _write_corpus(stdlib_files(max_bytes), corpus)

  tok_dir = base / f"tok-v{vocab_size}-s{tokenizer_sentences}"
  if not (tok_dir / SPM_FILE).is_file():
    train_tokenizer([corpus], vocab_size, tok_dir, max_sentences=tokenizer_sentences)

  data_dir = tok_dir / f"L{seq_len}-eval{eval_fraction}"
  pack([corpus], tok_dir, seq_len, data_dir, eval_fraction=eval_fraction, workers=workers)  # no-op once built
  return str(tok_dir), str(data_dir)
