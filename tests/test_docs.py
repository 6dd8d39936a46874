"""The docs: README.md stays a short front page whose links resolve, and the mkdocs site builds
with warnings as errors (a dead link, a missing page or anchor, a command whose --help fails)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def test_readme_is_short_and_its_links_point_at_files():
  text = README.read_text()
  assert len(text.splitlines()) <= 150, f"README.md has {len(text.splitlines())} lines; the rest belongs in docs/"
  targets = re.findall(r"\]\(([^)\s]+)\)", text)
  assert targets, "README.md links into the docs"
  relative = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
  missing = [t for t in relative if not (REPO / t).exists()]
  assert not missing, f"README.md links to files that do not exist: {missing}"


def test_readme_test_command_is_install_then_tests():
  """.ci/run greps this line and builds the docs between its install and its tests."""
  lines = [
    line for line in README.read_text().splitlines() if line.startswith("    python -m pip install -e '.[test]'")
  ]
  assert lines, "README.md lost the fresh-machine test command that .ci/run runs"
  install, _, tests = lines[0].strip().partition(" && ")
  assert install == "python -m pip install -e '.[test]'" and tests.startswith("python -m pytest"), lines[0]


@pytest.mark.slow
@pytest.mark.skipif(
  not importlib.util.find_spec("material"), reason="mkdocs-material is not installed (the docs extra)"
)
def test_mkdocs_build_strict(tmp_path):
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
  done = subprocess.run(
    [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )
  assert done.returncode == 0, done.stdout + done.stderr
  reference = (tmp_path / "site/reference/index.html").read_text()
  # every command's help made it in: a flag of each, and the config fields
  for flag in ["--workdir", "--mesh", "--grid", "--vocab_size", "--seq_len", "--sample", "--n", "--ast_tau"]:
    assert flag in reference, flag
  for flag in ["--n_samples", "--samples", "--prompt", "--max_batch", "--hf_dir", "warmup_steps"]:
    assert flag in reference, flag
  results = (tmp_path / "site/benchmark-results/index.html").read_text()
  assert "Train-step throughput" in results, "benchmarks/RESULTS.md was not included"
