"""Weights & Biases logging (`--config.wandb.project`) in W&B's offline mode, read back from the run's .wandb files
with wandb's own record definitions; and the one line when the wandb package is missing."""

import json
import shutil
import struct
import sys

import pytest

from helpers import REPO, SMALL, metric_rows, run_module, train_args

pytest.importorskip("wandb")

# offline: nothing leaves the machine; WANDB_DIR empty: the trainer puts W&B's files in the workdir (tmp_path)
WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_DIR": "", "WANDB_SILENT": "true"}
LEVELDB_BLOCK = 32768  # a .wandb file is a LevelDB log (after a 7-byte W&B header) of wandb_internal Record protos


def wandb_records(path):
  """The Records of one .wandb file, reassembled from the log's FULL / FIRST, MIDDLE, LAST chunks."""
  from wandb.proto import wandb_internal_pb2

  data = path.read_bytes()
  assert data[:4] == b":W&B", data[:7]
  pos, chunks = 7, []
  while pos + 7 <= len(data):
    room = LEVELDB_BLOCK - pos % LEVELDB_BLOCK
    _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    if room < 7 or (kind == 0 and length == 0):  # a block's zero-filled tail
      pos += room
      continue
    chunks.append(data[pos + 7 : pos + 7 + length])
    pos += 7 + length
    if kind in (1, 4):  # FULL, LAST
      record = wandb_internal_pb2.Record()
      record.ParseFromString(b"".join(chunks))
      chunks = []
      yield record


def wandb_runs(workdir) -> list[list]:
  """Each offline run's records, oldest first (one folder per trainer invocation)."""
  files = sorted((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
  return [list(wandb_records(f)) for f in files]


def history(records) -> list[dict]:
  rows = []
  for r in records:
    if r.WhichOneof("record_type") == "history":
      row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
      rows.append({k: v for k, v in row.items() if not k.startswith("_") or k == "_step"})
  return rows


@pytest.mark.slow
def test_resume_from_an_earlier_checkpoint_logs_each_step_once(tmp_path, stdlib_cache):
  """6 steps (checkpoints 3 and 6), the step-6 checkpoint removed, then on to 8: steps 4..6 are trained and written
  to metrics.jsonl twice, but the W&B run (the same one) has steps 1..8 once each, equal to metrics.jsonl."""
  steps = ["--config.total_steps=8", "--config.checkpoint_every=3", "--config.eval_every=100"]
  wandb = ["--config.wandb.project=phi1-test", "--config.wandb.tags=tiny,ci", "--config.wandb.name=tiny-resume"]
  out = run_module(
    "phi1_jax.train", *train_args(tmp_path, stdlib_cache, *steps, *wandb, "--config.run_until_step=6"), env=WANDB_ENV
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / "wandb_run.json").read_text())["last_step"] == 6
  shutil.rmtree(tmp_path / "checkpoints" / "6")
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, *steps, *wandb), env=WANDB_ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed from" in out.stdout

  rows = metric_rows(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8]
  runs = wandb_runs(tmp_path)
  assert len(runs) == 2
  starts = [next(r.run for r in records if r.WhichOneof("record_type") == "run") for records in runs]
  assert starts[0].run_id == starts[1].run_id == json.loads((tmp_path / "wandb_run.json").read_text())["run_id"]
  assert starts[0].project == "phi1-test" and starts[0].display_name == "tiny-resume"
  assert list(starts[0].tags) == ["tiny", "ci"]
  config = {i.key: json.loads(i.value_json) for i in starts[0].config.update}
  assert config["total_steps"] == 8 and config["optimizer"]["lr"] > 0 and config["wandb"]["project"] == "phi1-test"

  logged = [row for records in runs for row in history(records)]
  assert [r["_step"] for r in logged] == list(range(1, 9))  # each step once, in order
  first_rows = {}
  for r in rows:
    first_rows.setdefault(r["step"], r)
  for got in logged:
    want = {k: v for k, v in first_rows[got["_step"]].items() if k not in ("step", "time")}
    assert {k: v for k, v in got.items() if k != "_step"} == want, got["_step"]
  # the retrained steps' rows (metrics.jsonl's last written) hold the same losses as the ones W&B kept
  for again in rows[6:9]:
    kept = logged[again["step"] - 1]
    for key in ("loss", "grad_norm", "param_norm"):
      assert abs(again[key] - kept[key]) <= 1e-5 * abs(kept[key]), (again["step"], key)


@pytest.mark.slow
def test_sweep_trials_are_w_and_b_runs_in_one_group(tmp_path, stdlib_cache):
  root = tmp_path / "lr_sweep"
  out = run_module(
    "phi1_jax.sweep",
    "--config=configs/tiny.py",
    f"--root={root}",
    f"--set=data.cache_dir={stdlib_cache}",
    *(f"--set={s.removeprefix('--config.')}" for s in SMALL),
    "--set=total_steps=2",
    "--set=eval_every=100",
    "--set=wandb.project=phi1-sweep",
    "--grid=optimizer.lr=1e-3,3e-3",
    env=WANDB_ENV,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  names = ["00_lr=0.001", "01_lr=0.003"]
  starts = []
  for name in names:
    (records,) = wandb_runs(root / name)
    starts.append(next(r.run for r in records if r.WhichOneof("record_type") == "run"))
    assert [row["_step"] for row in history(records)] == [1, 2]
  assert [s.display_name for s in starts] == names
  assert [s.run_group for s in starts] == ["lr_sweep", "lr_sweep"]
  assert starts[0].run_id != starts[1].run_id


def test_missing_wandb_package_is_one_line_before_compiling(tmp_path):
  """sys.modules["wandb"] = None: the package cannot be found, as where it is not installed."""
  code = "import runpy, sys; sys.modules['wandb'] = None; runpy.run_module('phi1_jax.train', run_name='__main__')"
  import subprocess

  from helpers import repo_env

  out = subprocess.run(
    [
      sys.executable,
      "-c",
      code,
      "--config=configs/tiny.py",
      f"--workdir={tmp_path / 'run'}",
      "--config.wandb.project=x",
    ],
    cwd=REPO,
    env=repo_env(),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
    "python -m phi1_jax.train: error: --config.wandb.project needs the wandb package (pip install 'phi1_jax[wandb]')"
  ), out.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_online_without_an_api_key_is_one_line(tmp_path, stdlib_cache):
  env = {
    "WANDB_MODE": "online",
    "WANDB_API_KEY": "",
    "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
    "WANDB_DIR": "",
  }
  out = run_module("phi1_jax.train", *train_args(tmp_path, stdlib_cache, "--config.wandb.project=x"), env=env)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.strip().splitlines()[-1] == (
    "python -m phi1_jax.train: error: config.wandb: No API key configured. Use `wandb login` to log in; "
    "or log offline: --config.wandb.mode=offline"
  ), out.stderr


def test_unknown_mode_is_refused():
  from phi1_jax.cli import UserError
  from phi1_jax.config import base_config
  from phi1_jax.train import checks

  config = base_config()
  config.wandb.project, config.wandb.mode = "x", "offlin"
  with pytest.raises(UserError, match="config.wandb.mode='offlin': use online, offline or disabled"):
    checks.check_config(config)
