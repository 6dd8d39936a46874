"""Shared fixtures: the embedded stdlib corpus and a tiny checkpoint, built once per test session
(the plain helpers the test modules share are in helpers.py)."""

import os
from pathlib import Path

import pytest

from helpers import TINY_SEQ_LEN, TINY_VOCAB


def shared_dir(tmp_path_factory, name: str) -> Path:
  """A folder of this test run that every pytest-xdist worker shares (their temp folders' parent)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  (root / name).mkdir(exist_ok=True)
  return root / name


@pytest.fixture(scope="session")
def stdlib_cache(tmp_path_factory) -> Path:
  """A data cache folder holding the tiny config's tokenizer and packed stdlib shards: built once
  per run (a worker that finds another building it waits for it)."""
  from phi1_jax.data import stdlib_corpus

  cache = shared_dir(tmp_path_factory, "phi1_cache")
  stdlib_corpus.ensure_stdlib_data(cache, TINY_VOCAB, TINY_SEQ_LEN)
  return cache


@pytest.fixture(scope="session", autouse=True)
def jax_compile_cache(tmp_path_factory):
  """Subprocesses that compile the same programs share one persistent compilation cache, across workers."""
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(shared_dir(tmp_path_factory, "jax_cache")))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def tiny_checkpoint(stdlib_cache, tmp_path_factory) -> Path:
  """A random-init tiny Phi saved by the converter (params/ + model_config.json) with the stdlib
  tokenizer beside it, as `phi1_jax.serve` and `phi1_jax.sample` load checkpoints. init_std is
  large so greedy logits are far apart (float32 near-ties would make argmax comparisons flaky);
  the context is long enough (512) that a server test's requests outlast a client hanging up."""
  import shutil

  from flax import nnx

  from phi1_jax.model import checkpoint
  from phi1_jax.data import stdlib_corpus
  from phi1_jax.model.phi import ModelConfig, Phi

  tok_dir, _ = stdlib_corpus.ensure_stdlib_data(stdlib_cache, TINY_VOCAB, TINY_SEQ_LEN)
  cfg = ModelConfig(
    vocab_size=TINY_VOCAB,
    d_model=64,
    n_layers=2,
    n_heads=4,
    head_dim=16,
    mlp_dim=128,
    rotary_dim=8,
    max_seq_len=512,
    eos_id=0,
    init_std=0.5,
    scan_layers=False,
  )
  path = tmp_path_factory.mktemp("served") / "tiny-phi"
  checkpoint.save_params(path, cfg, nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  shutil.copy(Path(tok_dir) / "tokenizer.model", path / "tokenizer.model")
  return path
