"""Shared fixtures: the embedded stdlib corpus, built once per test session."""

import contextlib
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


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on (the OS picks it)."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_module(module: str, *args: str, timeout: float = 300, env: dict | None = None, **kw):
  """Runs `python -m module args...` in a real subprocess from the repo root."""
  import subprocess

  full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, env=full_env, timeout=timeout, capture_output=True, text=True, **kw
  )


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


@contextlib.contextmanager
def serve_process(checkpoint, log_path: Path, *flags: str, env: dict | None = None):
  """A real `python -m phi1_jax.serve --checkpoint=...` on 127.0.0.1 (port chosen by the OS);
  yields (base URL, process) once GET /health answers 200, terminates it after."""
  import json
  import re
  import subprocess
  import time
  import urllib.request

  def healthy(url) -> bool:
    try:
      with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return resp.status == 200 and bool(json.loads(resp.read()))
    except OSError:  # 503 while compiling, or not listening yet
      return False

  with open(log_path, "w") as log_file:
    proc = subprocess.Popen(
      [sys.executable, "-m", "phi1_jax.serve", f"--checkpoint={checkpoint}", "--port=0", *flags],
      cwd=REPO,
      env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
      stdout=log_file,
      stderr=subprocess.STDOUT,
    )
  try:
    url, deadline = None, time.time() + 300
    while not (url and healthy(url)):
      assert proc.poll() is None, f"server exited {proc.returncode}:\n{log_path.read_text()}"
      assert time.time() < deadline, f"server not ready in 300s:\n{log_path.read_text()}"
      if url is None:
        found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", log_path.read_text())
        url = found and found.group(1)
      time.sleep(0.25)
    yield url, proc
  finally:
    proc.terminate()
    proc.wait(30)


def slurm_partition(min_mem_mb: int = 0) -> str:
  """The default partition of a SLURM cluster whose node takes jobs (and offers `min_mem_mb`):
  already up, or started by launch/slurm_local_cluster.sh (root); the test skips, saying why, if neither."""
  import shutil
  import subprocess

  if not shutil.which("sbatch"):
    pytest.skip("SLURM is not installed (as root, launch/slurm_local_cluster.sh installs and starts it; .ci/run does)")

  def ready():
    out = subprocess.run(["sinfo", "-h", "-o", "%P|%t|%m"], capture_output=True, text=True, timeout=30).stdout
    for name, state, mem in (line.split("|") for line in out.split()):
      if name.endswith("*") and state in ("idle", "mix", "alloc", "comp") and int(mem.rstrip("+")) >= min_mem_mb:
        return name.rstrip("*")
    return None

  if not ready():
    if os.geteuid() != 0:
      pytest.skip(
        f"no SLURM node taking jobs with {min_mem_mb} MB, and (re)starting one "
        "(launch/slurm_local_cluster.sh) needs root"
      )
    proc = subprocess.run(
      ["bash", "launch/slurm_local_cluster.sh"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode == 2:
      pytest.skip(f"cannot start a SLURM cluster here: {proc.stderr.strip()}")
    assert proc.returncode == 0 and ready(), proc.stdout + proc.stderr
  return ready()
