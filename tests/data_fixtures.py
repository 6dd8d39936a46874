"""Fixtures shared by the data tests: a small real tokenizer, JSONL writing, packed folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phi1_jax.data.tokenizer import train_tokenizer
from helpers import STDLIB


def write_jsonl(path: Path, docs: list[dict]) -> Path:
  path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
  return path


def code_docs(n: int, prefix: str = "doc") -> list[dict]:
  """n small, distinct code documents (slices of real stdlib files)."""
  texts = [f.read_text(encoding="utf-8") for f in sorted((STDLIB / "json").glob("*.py"))]
  docs = []
  for i in range(n):
    text = texts[i % len(texts)]
    start = (i * 97) % max(1, len(text) - 400)
    body = text[start : start + 100 + (i * 37) % 300]
    docs.append({"id": f"{prefix}-{i}", "text": f"# {prefix} {i}\n{body}", "source": "test", "meta": {}})
  return docs


def read_records(data_dir: str | Path, split: str) -> list[np.ndarray]:
  """Every record of a split, in order, read with grain's ArrayRecord source."""
  import grain

  manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
  shards = [str(Path(data_dir) / s) for s in manifest["splits"][split]["shards"]]
  if not shards:
    return []
  source = grain.sources.ArrayRecordDataSource(shards)
  return [np.frombuffer(source[i], dtype="<i4") for i in range(len(source))]


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory) -> str:
  """A 1000-piece SentencePiece model trained on two stdlib packages (about a second)."""
  out = tmp_path_factory.mktemp("tok")
  return train_tokenizer([STDLIB / "json", STDLIB / "email"], 1000, out)
