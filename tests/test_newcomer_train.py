"""What a new user meets first, run as they would (subprocesses): the tiny demo's losses and summary,
rerunning a finished run, continuing it, and one-line errors for a mistyped config file, a file as
--workdir and a tokenizer the model does not fit."""

from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_SEQ_LEN, TINY_VOCAB, metric_rows, run_module

pytestmark = pytest.mark.slow

TINY_STEPS = 80


def _lines(out) -> list[str]:
  return [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]


def _tree(workdir: Path) -> dict:
  return {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}


def test_tiny_demo_eval_tracks_train_then_rerun_and_continue(tmp_path, stdlib_cache):
  """One tiny run (the demo's config, fewer steps), then the two things a user does next."""
  args = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}",
    f"--config.data.cache_dir={stdlib_cache}",
    "--config.eval_every=1000",
    "--config.log_every=5",
  ]  # eval at the end only
  out = run_module("phi1_jax.train", *args, f"--config.total_steps={TINY_STEPS}", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metric_rows(tmp_path)
  train_tail = np.mean([r["loss"] for r in rows[-4:]])  # the last 20 steps' logged losses
  eval_loss = rows[-1]["eval_loss"]
  print(
    f"tiny, {TINY_STEPS} steps: train loss {rows[0]['loss']:.3f} -> {train_tail:.3f} (mean of last 4 logged), "
    f"eval loss {eval_loss:.3f}"
  )
  # The held-out split measures the same kind of code as training: no generated codec tables in it.
  assert abs(eval_loss - train_tail) <= 0.1 * train_tail, (eval_loss, train_tail)
  assert eval_loss < rows[0]["loss"] - 2.0  # and the model did learn (8.3 at step 1)

  summary = out.stdout.strip().splitlines()[-1]
  assert summary.startswith(f"summary: finished at step {TINY_STEPS}/{TINY_STEPS} in ")
  assert f"train loss {rows[-1]['loss']:.4f}" in summary and f"eval loss {eval_loss:.4f}" in summary
  assert f"{TINY_STEPS * 16 * TINY_SEQ_LEN:,} tokens seen" in summary
  assert f"checkpoint {tmp_path / 'checkpoints' / str(TINY_STEPS)}" in summary
  assert (tmp_path / "checkpoints" / str(TINY_STEPS) / "state").is_dir()

  # The same command again: one line, exit 0, nothing compiled or written.
  before = _tree(tmp_path)
  again = run_module("phi1_jax.train", *args, f"--config.total_steps={TINY_STEPS}", env={"JAX_LOG_COMPILES": "1"})
  assert again.returncode == 0, again.stderr[-3000:]
  assert _lines(again) == [
    f"run already finished at step {TINY_STEPS} (total_steps={TINY_STEPS}) in {tmp_path}; "
    "raise --config.total_steps to continue"
  ]
  assert _tree(tmp_path) == before

  # Raising total_steps continues it.
  more = run_module("phi1_jax.train", *args, f"--config.total_steps={TINY_STEPS + 2}", "--config.log_every=1")
  assert more.returncode == 0, more.stderr[-3000:]
  assert f"resumed from {tmp_path}/checkpoints/{TINY_STEPS}" in more.stdout
  assert [r["step"] for r in metric_rows(tmp_path)][-2:] == [TINY_STEPS + 1, TINY_STEPS + 2]
  assert f"summary: finished at step {TINY_STEPS + 2}/{TINY_STEPS + 2}" in more.stdout


def _one_error_line(out) -> str:
  assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("python -m phi1_jax.train: error: "), out.stderr[-3000:]
  return lines[0]


def test_missing_config_file_and_file_as_workdir(tmp_path):
  out = run_module("phi1_jax.train", "--config=configs/tiyn.py", f"--workdir={tmp_path}", "--config.total_steps=5")
  assert _one_error_line(out) == "python -m phi1_jax.train: error: --config configs/tiyn.py: no such file"
  a_file = tmp_path / "notes.txt"
  a_file.write_text("mine")
  for workdir in (a_file, a_file / "run"):
    out = run_module("phi1_jax.train", "--config=configs/tiny.py", f"--workdir={workdir}")
    assert (
      _one_error_line(out) == f"python -m phi1_jax.train: error: --workdir {workdir}: {a_file} is a file, not a folder"
    )
  assert a_file.read_text() == "mine"


def test_tokenizer_the_model_does_not_fit_names_the_overrides(tmp_path, stdlib_cache):
  common = [
    "--config=configs/tiny.py",
    f"--workdir={tmp_path / 'w'}",
    f"--config.data.cache_dir={stdlib_cache}",
    "--config.total_steps=20",
  ]  # below tiny's 30 warmup steps
  out = run_module("phi1_jax.train", *common, "--config.model.vocab_size=1000")
  line = _one_error_line(out)
  assert f"has {TINY_VOCAB} tokens, model.vocab_size=1000" in line
  assert line.endswith(f"for this tokenizer set --config.model.vocab_size={TINY_VOCAB} --config.model.eos_id=0")
  assert "warning: optimizer.warmup_steps=30 >= total_steps=20" in out.stdout
  out = run_module("phi1_jax.train", *common, "--config.model.eos_id=7")
  assert _one_error_line(out).endswith("model.eos_id=7; set --config.model.eos_id=0")
  assert not (tmp_path / "w").exists()


def test_embedded_corpus_leaves_out_generated_tables_and_eval_is_spread(stdlib_cache):
  from phi1_jax.data import pipeline, stdlib_corpus

  root = stdlib_corpus.stdlib_dir()
  generated = [
    "encodings/cp1252.py",
    "encodings/koi8_r.py",
    "encodings/mac_latin2.py",
    "encodings/cp1006.py",
    "pydoc_data/topics.py",
    "html/entities.py",
  ]
  code = ["encodings/utf_8.py", "encodings/idna.py", "ast.py", "argparse.py", "json/decoder.py", "opcode.py"]
  judged = {
    name: stdlib_corpus.is_generated_table(Path(name), (root / name).read_text(encoding="utf-8"))
    for name in generated + code
  }
  assert judged == {name: name in generated for name in judged}
  chosen = {f.relative_to(root).as_posix() for f in stdlib_corpus.stdlib_files()}
  assert not chosen & set(generated) and "encodings/utf_8.py" in chosen

  data_dir = next(stdlib_cache.glob(f"*/tok-v{TINY_VOCAB}-*/L{TINY_SEQ_LEN}-*"))
  manifest = pipeline.read_manifest(data_dir)
  assert manifest["splits"]["eval"]["documents"] >= 40  # many files, not a handful
  every = pipeline.split_dataset(data_dir, "eval")
  batches = pipeline.make_eval_batches(data_dir, batch_size=4, max_batches=2)
  got = np.concatenate([b["tokens"] for b in batches])
  want = np.stack([every[j * len(every) // 8]["tokens"] for j in range(8)])  # from all over the split
  assert np.array_equal(got, want) and len(every) > 100
