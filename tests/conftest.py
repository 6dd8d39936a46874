"""Shared fixtures: the embedded stdlib corpus, built once per test session."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SEQ_LEN = 128
TINY_VOCAB = 4096


@pytest.fixture(scope="session")
def stdlib_cache(tmp_path_factory) -> Path:
  """A data cache folder holding the tiny config's tokenizer and packed stdlib shards."""
  from phi1_jax.data import stdlib_corpus
  cache = tmp_path_factory.mktemp("phi1_cache")
  stdlib_corpus.ensure_stdlib_data(cache, TINY_VOCAB, TINY_SEQ_LEN)
  return cache


@pytest.fixture(scope="session", autouse=True)
def jax_compile_cache(tmp_path_factory):
  """Subprocesses that compile the same programs share one persistent compilation cache."""
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def run_module(module: str, *args: str, timeout: float = 300, env: dict | None = None, **kw):
  """Runs `python -m module args...` in a real subprocess from the repo root."""
  import subprocess
  full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env, timeout=timeout,
                        capture_output=True, text=True, **kw)
