"""The `curate embed` stage: document embeddings as float16 .npy shards aligned with id files.

  OUT/config.json            what this folder is for (inputs, sample, embedder fingerprint); a rerun
                             with anything different is refused, so one folder never mixes two runs
  OUT/emb-00000.npy          float16 [n, D], row i is the document on line i of ids-00000.txt
  OUT/ids-00000.txt          one document id a line
  OUT/metrics.jsonl          a row per shard: documents, tokens, seconds, tokens/s
  OUT/manifest.json          inputs with checksums, counts, tokens, the embedder's identity

A shard is written to a temporary name and renamed (ids first, the .npy last), so a killed run
leaves whole shards only; a rerun skips every finished shard whose ids are the expected ones.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import tqdm

from phi1_jax.curate import documents
from phi1_jax.cli import UserError
from phi1_jax.curate.common import check_config, write_json_atomic
from phi1_jax.data import sources

FORMAT = "phi1_jax.embeddings/v1"


def _shard_names(k: int) -> tuple[str, str]:
  return f"emb-{k:05d}.npy", f"ids-{k:05d}.txt"


def _batched(it, n):
  batch = []
  for x in it:
    batch.append(x)
    if len(batch) == n:
      yield batch
      batch = []
  if batch:
    yield batch


def embed_documents(
  inputs,
  checkpoint,
  out,
  *,
  tokenizer=None,
  max_len=512,
  pooling="mean",
  batch_size=16,
  shard_size=4096,
  sample=None,
  seed=0,
  max_bad_fraction=0.001,
  text_key="text",
  id_key="id",
  log=print,
) -> dict:
  """Runs the stage (resuming a killed run) and returns the manifest."""
  if shard_size < 1:
    raise UserError(f"--shard_size={shard_size} must be positive")
  if sample is not None and sample < 1:
    raise UserError(f"--sample={sample} must be positive")
  if not 0 <= max_bad_fraction <= 1:
    raise UserError(f"--max_bad_fraction={max_bad_fraction} must be in [0, 1]")
  described = sources.describe_inputs(inputs, text_key, id_key)
  from phi1_jax.stages.embed import Embedder  # jax is imported only once the flags are known good

  try:
    embedder = Embedder(checkpoint, tokenizer, max_len=max_len, pooling=pooling, batch_size=batch_size)
  except (ValueError, OSError) as e:
    raise UserError(str(e)) from None
  out = Path(out)
  config = {
    "format": FORMAT,
    "inputs": sources.fingerprints(described),
    "sample": sample,
    "seed": seed,
    "embedder": embedder.fingerprint,
    "shard_size": shard_size,
  }
  check_config(out, config)

  bad, counted = [], []
  docs = documents.sampled_documents(described, sample, seed, bad, counted)  # streamed: inputs may be large
  total_tokens, done_docs, n_docs, n_shards, t_start = 0, 0, 0, 0, time.perf_counter()
  metrics = open(out / "metrics.jsonl", "a")
  bar = tqdm.tqdm(total=sample, desc="embedding", unit="doc", mininterval=5)
  for k, shard in enumerate(_batched(docs, shard_size)):
    n_docs, n_shards = n_docs + len(shard), k + 1
    emb_name, ids_name = _shard_names(k)
    ids = [d["id"] for d in shard]
    if (out / emb_name).is_file() and (out / ids_name).read_text().splitlines() == ids:
      bar.update(len(shard))
      continue
    t0 = time.perf_counter()
    tokens = embedder.tokenize([d["text"] for d in shard])
    vecs = embedder.embed_tokens(tokens)
    ntok = sum(map(len, tokens))
    (out / f".{ids_name}.tmp").write_text("".join(i + "\n" for i in ids))
    os.replace(out / f".{ids_name}.tmp", out / ids_name)
    with open(out / f".{emb_name}.tmp", "wb") as fh:
      np.save(fh, vecs.astype(np.float16))
    os.replace(out / f".{emb_name}.tmp", out / emb_name)
    dt = time.perf_counter() - t0
    total_tokens += ntok
    done_docs += len(shard)
    metrics.write(
      json.dumps(
        {
          "shard": k,
          "documents": len(shard),
          "tokens": ntok,
          "seconds": round(dt, 3),
          "tokens_per_sec": round(ntok / max(dt, 1e-9), 1),
          "time": time.time(),
        }
      )
      + "\n"
    )
    metrics.flush()
    bar.update(len(shard))
  bar.close()
  metrics.close()
  documents.check_bad(bad, counted[0], max_bad_fraction, log=log)  # as pack: counted on the way, judged at the end
  # A stale shard from a bigger earlier run cannot exist: config.json pins the inputs and sample.
  manifest = {
    "format": FORMAT,
    "inputs": documents.public(described),
    "sample": sample,
    "seed": seed,
    "documents": n_docs,
    "bad_input_items": {"count": len(bad), "items": bad[:20]},
    "shards": n_shards,
    "shard_size": shard_size,
    "dtype": "float16",
    "embedder": {**embedder.identity, "fingerprint": embedder.fingerprint},
    "this_run": {
      "documents_embedded": done_docs,
      "tokens_embedded": total_tokens,
      "seconds": round(time.perf_counter() - t_start, 3),
    },
  }
  write_json_atomic(out / "manifest.json", manifest)
  log(
    f"{out}: {n_docs} documents in {n_shards} shard(s), {done_docs} embedded now "
    f"({total_tokens} tokens), dim {embedder.cfg.d_model}"
  )
  return manifest


def load_embeddings(folder) -> tuple[list[str], np.ndarray, dict]:
  """(ids, float32 [n, D], manifest) of a finished `curate embed` folder."""
  folder = Path(folder)
  manifest_path = folder / "manifest.json"
  if not manifest_path.is_file():
    raise UserError(f"--embeddings {folder}: no manifest.json (run `curate embed` to the end first)")
  manifest = json.loads(manifest_path.read_text())
  if manifest.get("format") != FORMAT:
    raise UserError(f"--embeddings {folder}: manifest format {manifest.get('format')!r} is not {FORMAT}")
  ids, vecs = [], []
  for k in range(manifest["shards"]):
    emb_name, ids_name = _shard_names(k)
    shard_ids = (folder / ids_name).read_text().splitlines()
    shard = np.load(folder / emb_name)
    if len(shard_ids) != len(shard):
      raise UserError(f"{folder / emb_name}: {len(shard)} rows but {ids_name} has {len(shard_ids)} ids")
    ids += shard_ids
    vecs.append(shard.astype(np.float32))
  dim = manifest["embedder"]["dim"]
  return ids, (np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)), manifest
