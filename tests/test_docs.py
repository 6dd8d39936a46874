"""The docs: README.md stays a short front page whose links resolve, and the mkdocs site builds
with warnings as errors (a dead link, a missing page or anchor, a command whose --help fails)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO

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
  """.ci/run greps this line and runs lint and the docs build between its installs and its tests."""
  lines = [
    line for line in README.read_text().splitlines() if line.startswith("    python -m pip install -e '.[test]'")
  ]
  assert lines, "README.md lost the fresh-machine test command that .ci/run runs"
  install, _, tests = lines[0].strip().rpartition(" && ")
  assert install.startswith("python -m pip install -e '.[test]'") and tests.startswith("python -m pytest"), lines[0]
  assert "pytest" not in install, lines[0]


def _missing_name(dotted: str) -> str | None:
  """Why `phi1_jax.a.b[.name]` names nothing in the repository (a module, then one top-level name), or None."""
  parts = dotted.split(".")
  path, i = REPO / parts[0], 1
  while i < len(parts) and (path / parts[i]).is_dir():
    path, i = path / parts[i], i + 1
  if i < len(parts) and (path / f"{parts[i]}.py").is_file():
    path, i = path / f"{parts[i]}.py", i + 1
  elif path.is_dir():
    path = path / "__init__.py"
  rest = parts[i:]
  if not rest:
    return None
  if len(rest) == 1 and re.search(rf"(?m)^(def|class) {rest[0]}\b|^{rest[0]}\s*[:=]", path.read_text()):
    return None
  return f"{dotted} ({'.'.join(rest)} is not in {path.relative_to(REPO)})"


def test_docs_name_files_and_modules_that_exist():
  """Modules move: every repository path and phi1_jax.module.name the docs and README mention is there."""
  pages = [*sorted((REPO / "docs").glob("*.md")), README]
  missing = []
  for page in pages:
    text = page.read_text()
    paths = re.findall(
      r"\b(?:phi1_jax|tests|benchmarks|launch|configs|notebooks|docs)/[\w./-]*\w\.(?:py|txt|json|sh|sbatch|ipynb|md)\b",
      text,
    )
    missing += [f"{page.name}: {p}" for p in sorted(set(paths)) if not (REPO / p).exists()]
    names = sorted(set(re.findall(r"\bphi1_jax(?:\.\w+)+", text)))
    missing += [f"{page.name}: {why}" for why in map(_missing_name, names) if why]
  assert not missing, "the docs name what does not exist:\n" + "\n".join(missing)


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
