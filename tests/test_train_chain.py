"""The trainer along the README's chain, in real subprocesses: a mixture's eval loss, finetuning a
tiny run, a full disk, two trainers on one workdir."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, TINY_SEQ_LEN, TINY_VOCAB, metric_rows, repo_env, run_module, train_args


@pytest.fixture(scope="session")
def textbooks(stdlib_cache, tmp_path_factory) -> Path:
  """A second packed source with the tiny tokenizer whose held-out split is 4 records: one batch of 4."""
  from phi1_jax.data import pack, stdlib_corpus

  tok_dir, data_dir = stdlib_corpus.ensure_stdlib_data(stdlib_cache, TINY_VOCAB, TINY_SEQ_LEN)
  base = tmp_path_factory.mktemp("textbooks")
  corpus = Path(data_dir).parent.parent / "corpus.jsonl"
  (base / "docs.jsonl").write_text("".join(corpus.read_text().splitlines(keepends=True)[:40]))
  manifest = pack.pack([base / "docs.jsonl"], tok_dir, TINY_SEQ_LEN, base / "textbooks", eval_fraction=0.05, workers=1)
  assert manifest["splits"]["eval"]["records"] == 4
  return base / "textbooks"


def stdlib_data(cache) -> str:
  from phi1_jax.data import stdlib_corpus

  return stdlib_corpus.ensure_stdlib_data(cache, TINY_VOCAB, TINY_SEQ_LEN)[1]


@pytest.mark.slow
def test_mixture_eval_weighs_every_source_on_its_own_cadence(tmp_path, stdlib_cache, textbooks):
  code = stdlib_data(stdlib_cache)
  out = run_module(
    "phi1_jax.train",
    *train_args(
      tmp_path,
      stdlib_cache,
      f"--config.data.mixture={code}:0.87,{textbooks}:0.13",
      "--config.total_steps=6",
      "--config.log_every=2",
      "--config.eval_every=3",
    ),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = [r for r in metric_rows(tmp_path) if "eval_loss" in r]
  assert [r["step"] for r in rows] == [3, 6]  # every eval_every steps, whatever log_every is
  name = Path(code).name
  for r in rows:
    assert r[f"eval_loss/{name}"] > 1 and r["eval_loss/textbooks"] > 1
    assert r["eval_loss"] == pytest.approx(0.87 * r[f"eval_loss/{name}"] + 0.13 * r["eval_loss/textbooks"])

  # batch 8: textbooks' 4 held-out records are left out, in one line, and never read as a loss of 0
  small = tmp_path / "small"
  out = run_module(
    "phi1_jax.train",
    *train_args(
      small,
      stdlib_cache,
      f"--config.data.mixture={code}:0.87,{textbooks}:0.13",
      "--config.total_steps=1",
      "--config.batch_size=8",
    ),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"warning: eval split of {textbooks} has 4 records, fewer than one eval batch of batch_size=8" in out.stdout
  assert metric_rows(small)[-1]["eval_loss"] > 1

  # an eval_path too small for one batch: one line, exit 2, before any compilation
  out = run_module(
    "phi1_jax.train",
    *train_args(
      tmp_path / "none",
      stdlib_cache,
      f"--config.data.mixture={code}",
      f"--config.data.eval_path={textbooks}",
      "--config.batch_size=8",
    ),
  )
  assert out.returncode == 2
  assert out.stderr.strip() == (
    f"python -m phi1_jax.train: error: no held-out split holds one eval batch of batch_size=8 records ({textbooks} has 4); "
    "pack the data with a larger --eval_fraction or set --config.data.eval_path to a folder with more"
  )


@pytest.mark.slow
def test_second_trainer_on_a_workdir_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, stdlib_cache):
  import signal
  import socket

  args = train_args(tmp_path, stdlib_cache, "--config.total_steps=100000", "--config.checkpoint_every=2")
  first = subprocess.Popen(
    [sys.executable, "-m", "phi1_jax.train", *args],
    cwd=REPO,
    env=repo_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  try:
    for line in first.stdout:  # training, with a checkpoint written
      if line.startswith("step 3/"):
        break
    second = run_module("phi1_jax.train", *args, timeout=120)
    assert second.returncode == 2
    assert second.stderr.strip() == (
      f"python -m phi1_jax.train: error: workdir {tmp_path} is in use by another trainer (host {socket.gethostname()}, "
      f"pid {first.pid}); wait for it to end, or stop it, or choose another --workdir"
    )
    assert first.poll() is None
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  saved = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  steps = [r["step"] for r in metric_rows(tmp_path)]
  assert steps == sorted(set(steps))  # the second wrote no metrics

  out = run_module("phi1_jax.train", *args, f"--config.run_until_step={saved + 2}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {tmp_path}/checkpoints/{saved}" in out.stdout


def save_tiny_checkpoint(path, **fields):
  from flax import nnx

  from phi1_jax.model import checkpoint
  from phi1_jax.model.phi import ModelConfig, Phi

  cfg = ModelConfig(
    **{
      **dict(
        vocab_size=TINY_VOCAB,
        d_model=32,
        n_layers=1,
        n_heads=2,
        head_dim=16,
        mlp_dim=64,
        rotary_dim=8,
        max_seq_len=128,
        eos_id=0,
      ),
      **fields,
    }
  )
  checkpoint.save_params(path, cfg, nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param)))


@pytest.mark.slow
def test_finetune_takes_the_architecture_from_init_from(tmp_path, stdlib_cache, textbooks):
  from phi1_jax.config import ARCHITECTURE_FIELDS

  tiny, ft = tmp_path / "tiny", tmp_path / "ft"
  out = run_module("phi1_jax.train", *train_args(tiny, stdlib_cache, "--config.total_steps=2"))
  assert out.returncode == 0, out.stderr[-3000:]
  finetune = [
    "--config=configs/phi1_finetune.py",
    f"--config.init_from={tiny}",
    f"--workdir={ft}",
    f"--config.data.mixture={textbooks}",
    "--config.total_steps=2",
    "--config.batch_size=4",
  ]

  out = run_module(
    "phi1_jax.train",
    *finetune,
    "--config.model.rotary_dim=32",
    "--config.model.max_seq_len=2048",
    "--config.model.d_model=64",
  )  # d_model agrees with the checkpoint
  assert out.returncode == 2 and out.stderr.strip() == (
    f"python -m phi1_jax.train: error: init_from {tiny} was trained with another architecture: model.rotary_dim=32 (checkpoint: 16), "
    "model.max_seq_len=2048 (checkpoint: 128); leave these unset to take the checkpoint's"
  )
  out = run_module("phi1_jax.train", *[a for a in finetune if not a.startswith("--config.init_from")])
  assert out.returncode == 2 and out.stderr.strip() == (
    "python -m phi1_jax.train: error: config.seq_len is unset: give it, or --config.init_from a checkpoint to take it from"
  )
  out = run_module("phi1_jax.train", *finetune, "--config.seq_len=256")
  assert (
    out.returncode == 2
    and out.stderr.strip() == "python -m phi1_jax.train: error: seq_len=256 exceeds model.max_seq_len=128"
  )
  assert not ft.exists()

  other = tmp_path / "other-vocab"  # a checkpoint whose vocabulary the data's tokenizer does not fit
  save_tiny_checkpoint(other, vocab_size=1024)
  out = run_module("phi1_jax.train", *finetune, f"--config.init_from={other}")
  assert out.returncode == 2 and out.stderr.strip().endswith(
    f"has {TINY_VOCAB} tokens, model.vocab_size=1024; pack the data with the tokenizer {other} was trained with"
  )

  out = run_module("phi1_jax.train", *finetune)  # no model override
  assert out.returncode == 0, out.stderr[-3000:]
  trained, tuned = (json.loads((d / "model_config.json").read_text()) for d in (tiny, ft))
  assert {k: tuned[k] for k in ARCHITECTURE_FIELDS} == {k: trained[k] for k in ARCHITECTURE_FIELDS}
  assert tuned["rotary_dim"] == 16 and tuned["max_seq_len"] == 128 and tuned["d_model"] == 64
  assert tuned["attn_dropout"] == tuned["resid_dropout"] == 0.1 and trained["attn_dropout"] == 0.0  # the finetune's
  assert json.loads((ft / "config.json").read_text())["seq_len"] == 128


def test_space_warning_before_a_save():
  from phi1_jax.train.checkpoints import space_warning

  mb = 1_000_000
  assert space_warning("ck", 4, 6, need=7 * mb, free=20 * mb, deletes_one=False) is None  # room for two more
  assert space_warning("ck", 4, 6, need=7 * mb, free=10 * mb, deletes_one=True) is None  # the oldest goes after it
  assert space_warning("ck", 4, 6, need=7 * mb, free=10 * mb, deletes_one=False) == (
    "warning: ck has 10.0 MB free, room for the checkpoint of step 4 (about 7.0 MB) but not the next at step 6: "
    "free space or lower keep_checkpoints before then"
  )
  assert space_warning("ck", 6, 8, need=7 * mb, free=1 * mb, deletes_one=True) == (
    "warning: ck has 1.0 MB free, the checkpoint of step 6 needs about 7.0 MB: this save will fail; free space now"
  )


@pytest.fixture
def small_disk(tmp_path):
  """A 12 MB filesystem (tmpfs, mounted as root), room for two checkpoints of the SMALL model."""
  import os

  disk = tmp_path / "disk"
  disk.mkdir()
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root")
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True, text=True
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
  yield disk
  subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.slow
def test_full_disk_is_one_line_naming_the_step_and_the_last_good_checkpoint(small_disk, stdlib_cache):
  import shutil

  workdir = small_disk / "run"
  args = train_args(
    workdir, stdlib_cache, "--config.total_steps=8", "--config.checkpoint_every=2", "--config.log_every=2"
  )
  out = run_module("phi1_jax.train", *args)
  assert out.returncode == 1
  ckpts = workdir / "checkpoints"
  assert "Traceback" not in out.stdout + out.stderr and len((out.stdout + out.stderr).splitlines()) < 12, out.stderr[
    -3000:
  ]
  assert re.search(
    rf"^warning: {ckpts} has [\d.]+ MB free, room for the checkpoint of step 4 \(about [\d.]+ MB\) "
    r"but not the next at step 6",
    out.stdout,
    re.M,
  ), out.stdout
  assert re.fullmatch(
    rf"python -m phi1_jax.train: error: no space left on device for the checkpoint of step 6 in {ckpts}: it needs about [\d.]+ MB, "
    rf"[\d.]+ MB was free; the last good checkpoint is {ckpts}/4; free space and rerun the same "
    r"command to resume",
    out.stderr.strip(),
  ), out.stderr

  shutil.rmtree(ckpts / "2")  # space freed: the rerun resumes from the last good checkpoint
  out = run_module("phi1_jax.train", *args, "--config.keep_checkpoints=1")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {ckpts}/4" in out.stdout


def test_architecture_of_a_hugging_face_init_from(tmp_path):
  """A save_pretrained folder's architecture, read without its weights, small vocabulary's eos id included."""
  import dataclasses

  from flax import nnx

  from phi1_jax.model import hf as convert
  from phi1_jax.train.checks import checkpoint_model_config
  from phi1_jax.config import ARCHITECTURE_FIELDS
  from phi1_jax.model.phi import ModelConfig, Phi

  cfg = ModelConfig(
    vocab_size=TINY_VOCAB,
    d_model=32,
    n_layers=1,
    n_heads=2,
    head_dim=16,
    mlp_dim=64,
    rotary_dim=8,
    max_seq_len=128,
    eos_id=0,
    ln_eps=1e-6,
    rope_theta=500.0,
  )
  convert.write_hf_dir(
    tmp_path, *convert.params_to_hf(cfg, nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param)))
  )
  read = dataclasses.asdict(checkpoint_model_config(str(tmp_path)))
  assert {k: read[k] for k in ARCHITECTURE_FIELDS} == {k: getattr(cfg, k) for k in ARCHITECTURE_FIELDS}
