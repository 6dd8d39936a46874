"""notebooks/quickstart.ipynb runs top to bottom on a real (short) tiny run, as `jupyter execute` runs it."""

import shutil
import subprocess
import sys

import nbformat
import pytest

from helpers import REPO, repo_env, run_module

pytestmark = pytest.mark.slow


def test_quickstart_notebook_executes(tmp_path, stdlib_cache):
  workdir = tmp_path / "run"
  train = run_module(
    "phi1_jax.train",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--config.data.cache_dir={stdlib_cache}",
    "--config.model.d_model=32",
    "--config.model.n_layers=1",
    "--config.model.n_heads=2",
    "--config.model.head_dim=16",
    "--config.model.mlp_dim=64",
    "--config.batch_size=2",
    "--config.total_steps=4",
    "--config.log_every=1",
    "--config.eval_every=2",
    "--config.eval_batches=1",
    "--config.checkpoint_every=4",
  )
  assert train.returncode == 0, train.stderr[-3000:]

  notebook = tmp_path / "quickstart.ipynb"
  shutil.copy(REPO / "notebooks" / "quickstart.ipynb", notebook)
  env = repo_env(JAX_PLATFORMS="cpu", PHI1_WORKDIR=str(workdir))
  proc = subprocess.run(
    [sys.executable, "-m", "jupyter", "execute", str(notebook), "--output=executed", "--timeout=300"],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]

  cells = [c for c in nbformat.read(tmp_path / "executed.ipynb", as_version=4).cells if c.cell_type == "code"]
  text = [o.text for c in cells for o in c.outputs if o.output_type == "stream"]
  assert any(t.startswith("last train loss (4, ") for t in text), text
  assert any("image/png" in o.get("data", {}) for o in cells[1].outputs)  # the loss plot
  printed = [o.text for o in cells[2].outputs if o.output_type == "stream" and o.name == "stdout"]
  assert printed and printed[-1].endswith("\n"), cells[2].outputs  # the sample (maybe empty: 4 steps of training)
