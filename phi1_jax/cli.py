"""Checks shared by the command-line entry points, so a user mistake ends in one line before work."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


class OneLineParser(argparse.ArgumentParser):
  """argparse that reports a bad flag in one line (no usage block), exit code 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def out_dir_problem(path: str | os.PathLike) -> str | None:
  """Why `path` cannot be (or become) an output folder, or None if it can; callers prefix the flag.

  Checks what a later mkdir/write would trip on, so the command fails before its long work:
  `path` is a file, a parent of it is a file, or the nearest existing folder is not writable.
  """
  p = Path(path)
  if p.exists() and not p.is_dir():
    return "exists and is not a folder"
  existing = p
  while not existing.exists():  # the folder mkdir(parents=True) would start from
    if existing.parent == existing:
      break
    existing = existing.parent
  if existing != p and not existing.is_dir():
    return f"{existing} is a file, not a folder"
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"{existing} is not writable"
  return None
