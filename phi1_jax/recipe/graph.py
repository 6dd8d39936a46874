"""A recipe's steps as a graph: their order, their content hashes, their output folders, their state.

A step's identity is its command, its flags, its `version` and its inputs' versions: a `Raw`
input's declared version, else its path with the size and modification time of every file under
it (stat only: a 100 GB input is never read to hash it); an `Output` by the producing step's hash;
a `ServiceURL` by the service's command. Its output folder is ROOT/<command>/<hash>: the same
thing asked for by any recipe is found there, finished or half done. Folder layout:

    ROOT/<command>/<hash>/out/              the stage's own output (its --out or --workdir)
    ROOT/<command>/<hash>/log.txt           the stage's output, every attempt appended
    ROOT/<command>/<hash>/provenance.json   identity, command line, code version, attempts, counts;
                                            "completed" set once the stage exited 0
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from phi1_jax.recipe.steps import COMMANDS, Mixture, Output, Raw, Recipe, ServiceURL, Step

HASH_CHARS = 12


def check(recipe: Recipe) -> None:
  """ValueError naming the first problem: an unknown command, a repeated name, an input from a step
  or service that is not in the recipe, a cycle."""
  names = [s.name for s in recipe.steps]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"step names must be unique: {', '.join(repeated)}")
  services = {s.name for s in recipe.services}
  for step in recipe.steps:
    if step.command not in COMMANDS:
      raise ValueError(f"step {step.name}: unknown command {step.command!r} (known: {', '.join(COMMANDS)})")
    if step.launcher not in ("local", "slurm") or (step.launcher == "slurm" and step.command != "train"):
      raise ValueError(f"step {step.name}: launcher {step.launcher!r}: train steps take local or slurm, others local")
    for ref in step.inputs():
      if isinstance(ref, Output) and ref.step not in names:
        raise ValueError(f"step {step.name}: input from step {ref.step!r}, which the recipe does not have")
      if isinstance(ref, ServiceURL) and ref.service not in services:
        raise ValueError(f"step {step.name}: service {ref.service!r} is not among the recipe's services")
  order(recipe.steps)


def order(steps: list[Step]) -> list[Step]:
  """The steps with every step after the steps it reads from (stable: the recipe's order otherwise)."""
  by_name = {s.name: s for s in steps}
  done: dict[str, None] = {}
  visiting: set[str] = set()

  def visit(step: Step, path: tuple[str, ...]) -> None:
    if step.name in done:
      return
    if step.name in visiting:
      raise ValueError(f"the steps read from each other in a cycle: {' -> '.join(path + (step.name,))}")
    visiting.add(step.name)
    for ref in step.inputs():
      if isinstance(ref, Output):
        visit(by_name[ref.step], path + (step.name,))
    visiting.discard(step.name)
    done[step.name] = None

  for step in steps:
    visit(step, ())
  return [by_name[n] for n in done]


def raw_version(raw: Raw) -> str:
  """A Raw input's version: declared, else a hash of (path, size, mtime) of every file under it."""
  if raw.version:
    return f"declared:{raw.version}"
  path = Path(raw.path).expanduser()
  if not path.exists():
    return "missing"
  files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
  digest = hashlib.sha256()
  for f in files:
    st = f.stat()
    digest.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return f"stat:{len(files)} files:{digest.hexdigest()[:HASH_CHARS]}"


class Graph:
  """A checked, ordered recipe with every step's identity, hash and folder under `root`."""

  def __init__(self, recipe: Recipe, root: Path):
    check(recipe)
    self.recipe = recipe
    self.root = Path(root)
    self.steps = order(recipe.steps)
    self.by_name = {s.name: s for s in self.steps}
    self.services = {s.name: s for s in recipe.services}
    self._raw: dict[Raw, str] = {}
    self.missing_inputs: list[str] = []  # Raw paths that do not exist: a dry run shows them, a run refuses
    self.identity: dict[str, dict] = {}
    self.hash: dict[str, str] = {}
    for step in self.steps:
      self.identity[step.name] = self._identity(step)
      blob = json.dumps(self.identity[step.name], sort_keys=True, separators=(",", ":"))
      self.hash[step.name] = hashlib.sha256(blob.encode()).hexdigest()[:HASH_CHARS]

  def _value_identity(self, value: Any) -> Any:
    if isinstance(value, list | tuple):
      return [self._value_identity(v) for v in value]
    if isinstance(value, Raw):
      if value not in self._raw:
        self._raw[value] = raw_version(value)
        if self._raw[value] == "missing":
          self.missing_inputs.append(value.path)
      return {"raw": value.path, "version": self._raw[value]}
    if isinstance(value, Output):
      return {"output_of": self.hash[value.step], "command": self.by_name[value.step].command, "sub": value.subpath}
    if isinstance(value, ServiceURL):
      return {"service": list(self.services[value.service].argv)}
    if isinstance(value, Mixture):
      return {"mixture": [[self._value_identity(ref), weight] for ref, weight in value.parts]}
    return value

  def _identity(self, step: Step) -> dict:
    return {
      "command": step.command,
      "args": {k: self._value_identity(v) for k, v in sorted(step.args.items())},
      "version": step.version,
    }

  def folder(self, name: str) -> Path:
    step = self.by_name[name]
    return self.root / step.command.replace(" ", "-") / self.hash[name]

  def out_path(self, ref: Output) -> Path:
    out = self.folder(ref.step) / "out"
    return out / ref.subpath if ref.subpath else out

  def upstream(self, name: str) -> list[str]:
    """The steps `name` reads from, directly."""
    return [r.step for r in self.by_name[name].inputs() if isinstance(r, Output)]

  def downstream(self, names: set[str]) -> set[str]:
    """Every step that reads, directly or not, from one of `names`."""
    found: set[str] = set()
    for step in self.steps:  # in order, so a step's inputs are decided first
      if any(u in names or u in found for u in self.upstream(step.name)):
        found.add(step.name)
    return found

  def argv(self, name: str, service_urls: dict[str, str]) -> list[str]:
    """The stage's command line: `python -m phi1_jax.<module> [subcommand] --flag=value ...`."""
    step = self.by_name[name]
    module, *sub = step.command.split(" ")
    line = ["-m", f"phi1_jax.{module}", *sub]
    for key, value in step.args.items():
      values = value if isinstance(value, list | tuple) else [value]
      rendered = [self._render(v, service_urls) for v in values]
      if isinstance(value, bool) and not key.startswith("config."):
        line += [f"--{key}"] if value else []  # an on/off flag (store_true) takes no value
      elif isinstance(value, list | tuple):
        line += [f"--{key}", *rendered]
      else:
        line.append(f"--{key}={rendered[0]}")
    line.append(f"{COMMANDS[step.command]}={self.folder(name) / 'out'}")
    return line

  def _render(self, value: Any, service_urls: dict[str, str]) -> str:
    if isinstance(value, Raw):
      return str(Path(value.path).expanduser())
    if isinstance(value, Output):
      return str(self.out_path(value))
    if isinstance(value, ServiceURL):
      return service_urls.get(value.service, f"<{value.service} url>")
    if isinstance(value, Mixture):
      return ",".join(f"{self.out_path(ref)}:{weight}" for ref, weight in value.parts)
    return str(value)


def read_provenance(folder: Path) -> dict | None:
  try:
    return json.loads((folder / "provenance.json").read_text())
  except (OSError, ValueError):
    return None


def write_provenance(folder: Path, record: dict) -> None:
  """Atomically: a reader (or a rerun after SIGKILL) sees the old record or the new one, never half."""
  folder.mkdir(parents=True, exist_ok=True)
  tmp = folder / "provenance.json.tmp"
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
  os.replace(tmp, folder / "provenance.json")


def state(folder: Path) -> str:
  """ "done" (its stage exited 0), "interrupted" (started, not finished: a rerun resumes it) or "new"."""
  record = read_provenance(folder)
  if record is None:
    return "new"
  return "done" if record.get("completed") else "interrupted"
