"""What every curation stage shares: atomic JSON, the output-folder guard."""

from __future__ import annotations

import json
import os
from pathlib import Path

from phi1_jax.cli import UserError


def write_json_atomic(path: Path, obj) -> None:
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def check_config(out: Path, config: dict) -> None:
  """Claims `out` for this run: a new or empty folder gets config.json; a folder holding the same
  config.json is resumed; anything else is refused, so nothing a user made is overwritten."""
  path = out / "config.json"
  if path.is_file():
    found = json.loads(path.read_text())
    if found != json.loads(json.dumps(config)):
      diff = sorted(k for k in set(found) | set(config) if found.get(k) != config.get(k))
      raise UserError(f"--out {out}: holds a run with other settings ({', '.join(diff)}); choose a new --out")
    return
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f"--out {out}: already exists and is not a folder of this stage; choose a new --out")
  out.mkdir(parents=True, exist_ok=True)
  write_json_atomic(path, config)
