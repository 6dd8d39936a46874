"""phi1_jax.stages.embed and `curate embed`: pooled hidden states of a tiny checkpoint, checked against the
model run one document at a time; batching, padding, device count and the checkpoint format
(phi1_jax or Hugging Face) do not change the vectors; the command's shards resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, STDLIB, repo_env
from curate_fixtures import make_checkpoint
from phi1_jax.model import checkpoint
from phi1_jax.model.phi import model_from_params
from phi1_jax.curate.embeddings import load_embeddings
from phi1_jax.stages.embed import Embedder

TEXTS = [(STDLIB / "json" / n).read_text() for n in ("__init__.py", "tool.py")] + ["x = 1", "def f():\n  pass\n", "y"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
  return make_checkpoint(tmp_path_factory.mktemp("embed") / "tiny")


@pytest.fixture(scope="module")
def model(ckpt):
  return model_from_params(*checkpoint.load_params(ckpt))


def test_embeddings_are_the_models_pooled_hidden_states(ckpt, model):
  embedders = {p: Embedder(ckpt, max_len=64, batch_size=3, pooling=p) for p in ("mean", "last")}
  vecs = {p: e.embed(TEXTS) for p, e in embedders.items()}
  for i, text in enumerate(TEXTS):
    ids = embedders["mean"].tokenize([text])[0]
    assert 1 <= len(ids) <= 64
    h_LxD = np.asarray(model.hidden_states(np.array([ids]))[0][0])  # one document, no padding
    np.testing.assert_allclose(vecs["mean"][i], h_LxD.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vecs["last"][i], h_LxD[-1], rtol=1e-5, atol=1e-5)
  assert vecs["mean"].shape == (len(TEXTS), 32) and vecs["mean"].dtype == np.float32
  # Deterministic, and independent of batch size and of the other documents in the batch.
  np.testing.assert_array_equal(embedders["mean"].embed(TEXTS), vecs["mean"])
  other = Embedder(ckpt, max_len=64, batch_size=8).embed(TEXTS[::-1])[::-1]
  np.testing.assert_allclose(other, vecs["mean"], rtol=1e-5, atol=1e-6)


def test_a_hugging_face_folder_gives_the_same_vectors(ckpt, tmp_path):
  hf = tmp_path / "hf"
  checkpoint.orbax_to_hf(ckpt, hf)
  a = Embedder(ckpt, max_len=32).embed(TEXTS)
  b = Embedder(hf, ckpt, max_len=32)
  np.testing.assert_allclose(b.embed(TEXTS), a, rtol=1e-5, atol=1e-6)
  assert b.fingerprint == Embedder(ckpt, max_len=32).fingerprint  # same weights, same tokenizer


@pytest.mark.parametrize(
  "kw, message",
  [
    ({"max_len": 512}, "max_seq_len=256"),
    ({"pooling": "max"}, "pooling"),
    ({"tokenizer": "/nonexistent"}, "/nonexistent"),
  ],
)
def test_embedder_refuses_bad_settings(ckpt, kw, message):
  with pytest.raises(ValueError, match=message):
    Embedder(ckpt, **kw)


def _embed_cli(ckpt, out, *extra, devices=1):
  env = repo_env(devices=devices)
  cmd = [
    sys.executable,
    "-m",
    "phi1_jax.curate",
    "embed",
    "--input",
    str(STDLIB / "json"),
    str(STDLIB / "http"),
    f"--checkpoint={ckpt}",
    f"--out={out}",
    "--max_len=64",
    "--batch_size=4",
    "--shard_size=4",
    *extra,
  ]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_embed_command_shards_resume_and_match_in_process(ckpt, tmp_path):
  out = tmp_path / "emb"
  proc = _embed_cli(ckpt, out, devices=2)  # data parallel over two host devices
  assert proc.returncode == 0, proc.stderr[-3000:]
  ids, vecs, manifest = load_embeddings(out)
  assert manifest["documents"] == len(ids) == 10 and manifest["shards"] == 3 and len(set(ids)) == 10
  assert np.load(out / "emb-00000.npy").dtype == np.float16
  texts = {
    f"{d.name}/{f.relative_to(d).as_posix()}": f.read_text()
    for d in (STDLIB / "json", STDLIB / "http")
    for f in d.rglob("*.py")
  }
  want = Embedder(ckpt, max_len=64).embed([texts[i] for i in ids])
  np.testing.assert_allclose(vecs, want.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)
  assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

  before = {p.name: p.read_bytes() for p in out.glob("*.npy")}
  (out / "emb-00001.npy").unlink()  # as if killed while writing shard 1
  proc = _embed_cli(ckpt, out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  m = json.loads((out / "manifest.json").read_text())
  assert m["this_run"]["documents_embedded"] == 4  # only the missing shard
  assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == before

  proc = _embed_cli(ckpt, out, "--pooling=last")
  assert proc.returncode == 2 and proc.stderr.strip().endswith("choose a new --out")
  assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == before
