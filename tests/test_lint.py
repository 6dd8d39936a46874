"""The code's layout and its bug-shaped lint are ruff's (configured in pyproject.toml): run here so
that every CI run checks them, as `ruff format . && ruff check .` fixes them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers import REPO


@pytest.mark.skipif(not shutil.which("ruff"), reason="ruff is not installed (it is in the test extra)")
@pytest.mark.parametrize("command", [["ruff", "format", "--check", "."], ["ruff", "check", "."]])
def test_ruff(command):
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr
