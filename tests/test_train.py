"""The trainer end to end in real subprocesses: learning, exact resume after SIGKILL, bad input."""

import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, final_params, losses, metric_rows, run_module, sigkill_once_saved, train_args

pytestmark = pytest.mark.slow


def test_tiny_loss_falls(tmp_path, stdlib_cache):
  out = run_module(
    "phi1_jax.train",
    *train_args(
      tmp_path,
      stdlib_cache,
      "--config.total_steps=60",
      "--config.eval_every=20",
      "--config.model.d_model=128",
      "--config.batch_size=8",
    ),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metric_rows(tmp_path)
  evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
  assert len(evals) == 3
  # falling all along, from ln(4096)=8.3 (a uniform guess) by well over a nat on held-out code
  assert evals == sorted(evals, reverse=True) and evals[-1] < np.log(4096) - 1.5, evals
  assert rows[0]["loss"] > rows[-1]["loss"] + 1.0
  assert {"loss", "lr", "grad_norm", "tokens_per_sec"} <= set(rows[-1])
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert "ETA" in out.stdout and "tok/s" in out.stdout


def test_resume_after_sigkill_is_exact(tmp_path, stdlib_cache):
  """8 steps straight == 4 steps, SIGKILL after the step-4 checkpoint, then resume to 8."""
  steps = [
    "--config.total_steps=8",
    "--config.checkpoint_every=4",
    "--config.eval_every=5",
    "--config.model.resid_dropout=0.1",
    "--config.model.attn_dropout=0.1",
  ]
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  out = run_module("phi1_jax.train", *train_args(straight, stdlib_cache, *steps))
  assert out.returncode == 0, out.stderr[-3000:]

  # The step-5 eval compiles after the checkpoint, so the run is still going when it is killed.
  sigkill_once_saved(train_args(killed, stdlib_cache, *steps), killed / "checkpoints" / "4" / "state")
  assert not (killed / "checkpoints" / "8").exists()

  out = run_module("phi1_jax.train", *train_args(killed, stdlib_cache, *steps))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from" in out.stdout
  assert losses(killed) == losses(straight)
  assert sorted(losses(straight)) == list(range(1, 9))
  a, b = final_params(straight, 8), final_params(killed, 8)
  import jax

  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("checkpoint_every", [100000, 1])  # 1: the signal's step is always saved already
def test_sigterm_saves_and_exits_cleanly(tmp_path, stdlib_cache, checkpoint_every):
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "phi1_jax.train",
      *train_args(
        tmp_path, stdlib_cache, "--config.total_steps=100000", f"--config.checkpoint_every={checkpoint_every}"
      ),
    ],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  for line in proc.stdout:  # wait until training is under way
    if line.startswith("step 3/"):
      break
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0
  assert "stopped by signal SIGTERM" in rest
  steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert steps and max(steps) >= 3
  assert f"summary: stopped at step {max(steps)}/100000" in rest


def _single_error_line(out) -> str:
  assert out.returncode != 0
  lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
  return lines[-1]


def test_unknown_override_key(tmp_path, stdlib_cache):
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, "--config.optimizer.lrr=1e-3"))
  assert "lrr" in _single_error_line(out)
  assert not tmp_path.joinpath("checkpoints").exists()


def test_wrong_type_override(tmp_path, stdlib_cache):
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, "--config.total_steps=many"))
  assert "total_steps" in _single_error_line(out)


def test_missing_data_path(tmp_path, stdlib_cache):
  out = run_module(
    "phi1_jax.train", *train_args(tmp_path / "w", stdlib_cache, f"--config.data.mixture={tmp_path}/nope:1.0")
  )
  line = _single_error_line(out)
  assert line.startswith("python -m phi1_jax.train: error:") and "nope" in line and "does not exist" in line
  assert not (tmp_path / "w").exists()


def test_workdir_of_another_shape_is_refused_untouched(tmp_path, stdlib_cache):
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, "--config.total_steps=2"))
  assert out.returncode == 0, out.stderr[-3000:]
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
  out = run_module(
    "phi1_jax.train", *train_args(tmp_path, stdlib_cache, "--config.total_steps=4", "--config.model.d_model=96")
  )
  line = _single_error_line(out)
  assert "different shape" in line and "d_model 64 -> 96" in line
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, stdlib_cache):
  out = run_module(
    "phi1_jax.train",
    *train_args(
      tmp_path,
      stdlib_cache,
      "--config.total_steps=40",
      "--config.checkpoint_every=2",
      "--config.optimizer.lr=1e30",
      "--config.optimizer.warmup_steps=1",
    ),
  )
  assert out.returncode == 1
  assert re.search(r"(loss|grad_norm) is (nan|inf) at step \d+", out.stdout), out.stdout[-2000:]
  good = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  assert good
  params = final_params(tmp_path, max(good))
  import jax

  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_humaneval_metrics_during_training(tmp_path, stdlib_cache):
  out = run_module(
    "phi1_jax.train",
    *train_args(
      tmp_path,
      stdlib_cache,
      "--config.total_steps=2",
      "--config.humaneval_every=2",
      "--config.humaneval_limit=2",
      "--config.humaneval_loss_every=1",
    ),
  )
  assert out.returncode == 0, out.stderr[-3000:]
  rows = metric_rows(tmp_path)
  assert all(r["humaneval_canonical_loss"] > 0 for r in rows)  # every step
  assert "humaneval_pass@1" not in rows[0]
  assert rows[1]["humaneval_n_problems"] == 2 and rows[1]["humaneval_pass@1"] == 0.0  # an untrained model


def test_schedule_and_weight_decay_mask():
  import ml_collections
  from phi1_jax.train.state import decay_mask, lr_schedule

  opt = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=10, end_lr=0.1))
  lr = lr_schedule(opt, total_steps=100)
  assert np.allclose([lr(0), lr(5), lr(10), lr(55), lr(100)], [0.0, 0.5, 1.0, 0.55, 0.1])
  mask = decay_mask(
    {
      "embed": 0,
      "blocks": {"q_kernel": 0, "q_bias": 0, "ln_scale": 0, "ln_bias": 0},
      "final_ln_scale": 0,
      "lm_head_kernel": 0,
      "lm_head_bias": 0,
    }
  )
  assert mask == {
    "embed": True,
    "blocks": {"q_kernel": True, "q_bias": False, "ln_scale": False, "ln_bias": False},
    "final_ln_scale": False,
    "lm_head_kernel": True,
    "lm_head_bias": False,
  }
