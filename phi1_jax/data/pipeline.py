"""grain input pipeline over packed shards (see phi1_jax/data/pack.py for the format).

Train: `make_train_dataset([(data_dir, weight), ...], batch_size=B, seed=S, shard_index=i,
shard_count=n)` is an infinite grain.IterDataset of `{"tokens": int32[B, seq_len + 1]}`, B rows per
process. Each source is shuffled with a seed grain folds with the epoch number (a new order every
epoch) and repeated, and the sources are interleaved by their normalised weights (grain's
deterministic mixture: with weights 0.8 / 0.2 every 5 rows hold 4 of the first). That one global
stream is cut into global batches of n x B rows; process i reads rows [i*B, (i+1)*B) of each, so
the global batches, and the training they give, do not depend on the number of processes. The
whole pipeline is index-based, so the iterator's state is one integer and a resumed run sees
exactly the batches it would have seen.

Checkpointing the iterator with Orbax (grain ships the handler; `checkpoint_args` wraps it):

    import orbax.checkpoint as ocp
    from phi1_jax.data import pipeline
    train_iter = iter(pipeline.make_train_dataset(...))
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=pipeline.checkpoint_args(train_iter)))
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=pipeline.checkpoint_args(train_iter, restore=True)))  # sets train_iter's state in place

grain writes one JSON file per process (`process_<jax.process_index()>-of-<count>.json`).
Without Orbax: `train_iter.get_state()` / `train_iter.set_state(state)` (a small JSON-able dict).

Eval: `make_eval_batches(data_dir, batch_size=B)` is a list of the held-out split's batches in
record order; every process gets the same number of batches and the last partial one is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import grain
import numpy as np

from phi1_jax.data.pack import FORMAT


def read_manifest(data_dir: str | Path) -> dict:
  """The manifest of a packed folder; ValueError with one line if it is not one."""
  path = Path(data_dir) / "manifest.json"
  if not path.is_file():
    raise ValueError(f"{data_dir}: no manifest.json; not a packed data folder (run python -m phi1_jax.data.pack)")
  try:
    manifest = json.loads(path.read_text())
  except ValueError:
    raise ValueError(f"{path}: not valid JSON") from None
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
  for split in manifest["splits"].values():
    for shard in split["shards"]:
      if not (Path(data_dir) / shard).is_file():
        raise ValueError(f"{data_dir}: shard {shard} listed in manifest.json is missing")
  return manifest


def split_dataset(data_dir: str | Path, split: str) -> grain.MapDataset:
  """The split's records as a MapDataset of {"tokens": int32[seq_len + 1]}."""
  manifest = read_manifest(data_dir)
  shards = [str(Path(data_dir) / s) for s in manifest["splits"][split]["shards"]]
  if not shards:
    return grain.MapDataset.source([])
  return grain.MapDataset.source(grain.sources.ArrayRecordDataSource(shards)).map(_decode)


def split_records(data_dir: str | Path, split: str) -> int:
  """How many records a packed folder's split holds."""
  return len(split_dataset(data_dir, split))


def _decode(record: bytes) -> dict[str, np.ndarray]:
  return {"tokens": np.frombuffer(record, dtype="<i4").astype(np.int32)}


def _check_shard(shard_index: int, shard_count: int) -> None:
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index}, shard_count={shard_count}: need 0 <= shard_index < shard_count")


def make_train_dataset(
  sources: Sequence[tuple[str, float]],
  *,
  batch_size: int,
  seed: int,
  shard_index: int = 0,
  shard_count: int = 1,
  read_threads: int = 2,
) -> grain.IterDataset:
  """Infinite weighted mixture of packed train splits, batched per process (see module docstring)."""
  if not sources:
    raise ValueError("sources: give at least one (data_dir, weight)")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  _check_shard(shard_index, shard_count)
  manifests = [read_manifest(d) for d, _ in sources]
  first = manifests[0]
  for (d, w), m in zip(sources, manifests):
    if not w > 0:
      raise ValueError(f"{d}: weight {w} must be > 0")
    if m["seq_len"] != first["seq_len"]:
      raise ValueError(f"{d}: seq_len {m['seq_len']} differs from {sources[0][0]}'s {first['seq_len']}")
    if m["tokenizer"]["sha256"] != first["tokenizer"]["sha256"]:
      raise ValueError(
        f"{d}: packed with tokenizer {m['tokenizer']['path']}, not {sources[0][0]}'s {first['tokenizer']['path']}"
      )

  parts = []
  for i, (d, _) in enumerate(sources):
    records = split_dataset(d, "train")
    if len(records) == 0:
      raise ValueError(f"{d}: train split has no records")
    # Distinct shuffle per source; grain folds the epoch into the seed after repeat().
    parts.append(records.shuffle(seed=(seed * 1_000_003 + i) % 2**32).repeat())
  total = sum(w for _, w in sources)
  mixed = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, [w / total for _, w in sources])
  # One global order whatever the process count: global batch t is mixed[t*G:(t+1)*G] for
  # G = batch_size * shard_count, and this process reads rows [i*B, (i+1)*B) of it.
  B, G = batch_size, batch_size * shard_count
  mine = grain.MapDataset.range(len(mixed) // shard_count).map(lambda j: mixed[(j // B) * G + shard_index * B + j % B])
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(16, 2 * batch_size))
  return mine.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True)


def make_eval_batches(
  data_dir: str | Path,
  *,
  batch_size: int,
  max_batches: int | None = None,
  shard_index: int = 0,
  shard_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """The eval split as batches {"tokens": int32[batch_size, seq_len + 1]}, fixed order.

  Process i takes records i, i + n, ...; every process gets (records // n) // batch_size batches
  (capped by max_batches), so collective eval steps line up; leftover records are dropped. When
  max_batches takes fewer records than the split holds, they are spread evenly over the split
  (records 0, k, 2k, ...), so a capped eval still sees every part of it, not its first documents.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: must be >= 1")
  _check_shard(shard_index, shard_count)
  records = split_dataset(data_dir, "eval")
  n_batches = (len(records) // shard_count) // batch_size
  if max_batches is not None and max_batches < n_batches:
    n_batches = max_batches
    taken, every = n_batches * batch_size * shard_count, records
    records = grain.MapDataset.range(taken).map(lambda j: every[j * len(every) // taken])  # distinct: j*L//t grows
  mine = records[shard_index::shard_count][: n_batches * batch_size]
  return list(mine.batch(batch_size, drop_remainder=True)) if n_batches else []


def seek(iterator: grain.DatasetIterator, batch: int, batch_size: int) -> None:
  """Moves a fresh `make_train_dataset` iterator to global batch `batch` (of batch_size rows per
  process): how a run resumes on another process count, where no saved iterator state fits."""
  state = iterator.get_state()
  if "next_index" not in state:
    raise RuntimeError(f"grain iterator state {state} has no next_index; this grain version is not supported")
  iterator.set_state({**state, "next_index": batch * batch_size})


def checkpoint_args(iterator: grain.DatasetIterator, *, restore: bool = False) -> Any:
  """Orbax args that save (or restore into) `iterator`'s state; see the module docstring."""
  return grain.checkpoint.CheckpointRestore(iterator) if restore else grain.checkpoint.CheckpointSave(iterator)
