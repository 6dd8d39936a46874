"""grain pipeline: exact epochs across process shards, reshuffled epochs, weights, exact resume."""

import collections

import numpy as np
import pytest

from data_fixtures import code_docs, read_records, small_tokenizer, write_jsonl  # noqa: F401
from phi1_jax.data.pack import pack
from phi1_jax.data.pipeline import checkpoint_args, make_eval_batches, make_train_dataset, read_manifest, seek

SEQ_LEN = 16


@pytest.fixture(scope="module")
def packed(tmp_path_factory, small_tokenizer):
  """Two packed sources (different documents) and one with another seq_len."""
  root = tmp_path_factory.mktemp("packed")
  dirs = {}
  for name, n_docs, seq_len in (("a", 40, SEQ_LEN), ("b", 25, SEQ_LEN), ("long", 10, 32)):
    jsonl = write_jsonl(root / f"{name}.jsonl", code_docs(n_docs, prefix=name))
    pack([jsonl], small_tokenizer, seq_len, root / name, eval_fraction=0.2, workers=1, records_per_shard=40)
    dirs[name] = str(root / name)
  return dirs


def _rows(iterator, n_batches):
  return [tuple(row) for _ in range(n_batches) for row in next(iterator)["tokens"].tolist()]


def test_batches_have_the_promised_shape(packed):
  batch = next(iter(make_train_dataset([(packed["a"], 1.0)], batch_size=4, seed=0)))
  assert set(batch) == {"tokens"}
  assert batch["tokens"].shape == (4, SEQ_LEN + 1) and batch["tokens"].dtype == np.int32


def test_two_processes_cover_each_epoch_exactly_once(packed):
  records = [tuple(r.tolist()) for r in read_records(packed["a"], "train")]
  n = len(records)
  assert n > 50
  epochs = {0: collections.Counter(), 1: collections.Counter()}
  for shard in (0, 1):  # one row per process per step: process 0 reads even global rows, 1 odd
    it = iter(make_train_dataset([(packed["a"], 1.0)], batch_size=1, seed=7, shard_index=shard, shard_count=2))
    for k, row in enumerate(_rows(it, n)):  # local row k is global row 2k + shard
      epochs[(2 * k + shard) // n].update([row])
  assert epochs[0] == collections.Counter(records)  # together: every record exactly once
  assert epochs[1] == collections.Counter(records)


def test_epochs_are_reshuffled(packed):
  n = len(read_records(packed["a"], "train"))
  rows = _rows(iter(make_train_dataset([(packed["a"], 1.0)], batch_size=1, seed=7)), 2 * n)
  assert sorted(rows[:n]) == sorted(rows[n:]) and rows[:n] != rows[n:]


def test_global_batches_do_not_depend_on_the_process_count(packed):
  sources = [(packed["a"], 0.7), (packed["b"], 0.3)]
  one = iter(make_train_dataset(sources, batch_size=6, seed=2))
  three = [iter(make_train_dataset(sources, batch_size=2, seed=2, shard_index=i, shard_count=3)) for i in range(3)]
  for _ in range(25):  # past an epoch of both sources
    expected = next(one)["tokens"]
    assert np.array_equal(np.concatenate([next(it)["tokens"] for it in three]), expected)
  # a run resumed on another process count seeks its fresh iterators to the step
  two = [iter(make_train_dataset(sources, batch_size=3, seed=2, shard_index=i, shard_count=2)) for i in range(2)]
  for it in two:
    seek(it, 25, batch_size=3)
  for _ in range(5):
    assert np.array_equal(np.concatenate([next(it)["tokens"] for it in two]), next(one)["tokens"])


def test_mixture_follows_weights(packed):
  in_a, in_b = ({tuple(r.tolist()) for r in read_records(packed[s], "train")} for s in "ab")
  ds = make_train_dataset([(packed["a"], 3.0), (packed["b"], 1.0)], batch_size=8, seed=1)
  rows = [r for r in _rows(iter(ds), 50) if (r in in_a) != (r in in_b)]  # a few records occur in both
  assert len(rows) > 300
  share_b = sum(r in in_b for r in rows) / len(rows)
  assert abs(share_b - 0.25) < 0.03


def test_state_resumes_with_identical_batches(packed):
  ds = make_train_dataset([(packed["a"], 0.7), (packed["b"], 0.3)], batch_size=3, seed=5)
  it = iter(ds)
  for _ in range(37):  # past an epoch of both sources
    next(it)
  state = it.get_state()
  expected = [next(it)["tokens"] for _ in range(20)]
  resumed = iter(ds)
  resumed.set_state(state)
  assert all((next(resumed)["tokens"] == e).all() for e in expected)


def test_orbax_checkpoint_args_round_trip(packed, tmp_path):
  import orbax.checkpoint as ocp

  ds = make_train_dataset([(packed["a"], 1.0)], batch_size=2, seed=3)
  it = iter(ds)
  for _ in range(11):
    next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(11, args=ocp.args.Composite(data=checkpoint_args(it)))
    expected = [next(it)["tokens"] for _ in range(5)]  # advancing after save must not leak into it
    mngr.wait_until_finished()
    fresh = iter(ds)
    mngr.restore(11, args=ocp.args.Composite(data=checkpoint_args(fresh, restore=True)))
  assert all((next(fresh)["tokens"] == e).all() for e in expected)


def test_eval_batches_fixed_order_disjoint_and_equal_per_process(packed):
  records = read_records(packed["a"], "eval")
  shards = [make_eval_batches(packed["a"], batch_size=2, shard_index=i, shard_count=2) for i in (0, 1)]
  assert len(shards[0]) == len(shards[1]) == (len(records) // 2) // 2 >= 1
  assert all(b["tokens"].shape == (2, SEQ_LEN + 1) for s in shards for b in s)
  assert np.array_equal(shards[0][0]["tokens"], np.stack([records[0], records[2]]))
  assert len(make_eval_batches(packed["a"], batch_size=1, max_batches=2)) == 2
  again = make_eval_batches(packed["a"], batch_size=2, shard_index=0, shard_count=2)
  assert all((x["tokens"] == y["tokens"]).all() for x, y in zip(shards[0], again))


def test_bad_sources_fail_clearly(packed, tmp_path):
  with pytest.raises(ValueError, match="seq_len 32 differs"):
    make_train_dataset([(packed["a"], 1.0), (packed["long"], 1.0)], batch_size=2, seed=0)
  with pytest.raises(ValueError, match="weight 0"):
    make_train_dataset([(packed["a"], 1.0), (packed["b"], 0)], batch_size=2, seed=0)
  with pytest.raises(ValueError, match="not a packed data folder"):
    read_manifest(tmp_path)
  with pytest.raises(ValueError, match="shard_index=2"):
    make_train_dataset([(packed["a"], 1.0)], batch_size=2, seed=0, shard_index=2, shard_count=2)
  assert read_manifest(packed["a"])["seq_len"] == SEQ_LEN
