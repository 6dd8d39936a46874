"""What a recipe is made of: steps (one stage command each), their inputs, and stand-in services.

A recipe file (`configs/recipes/*.py`) defines `get_config()` (the knobs `--set key=value` changes)
and `get_recipe(config) -> Recipe`. Each `Step` is one command of the project's own stages, run
with its flags; a flag's value may be a `Raw` input (a path outside the recipe), an `Output` of
another step, or a `ServiceURL` of a stand-in server the recipe starts. The step's output folder
is named by a hash of its command, its flags and its inputs' versions (`phi1_jax.recipe.graph`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The stages a step may run: its command (as a user types it after `python -m phi1_jax.`) and the
# flag that names its output folder.
COMMANDS = {
  "data.tokenizer train": "--out",
  "data.pack": "--out",
  "curate annotate": "--out",
  "curate embed": "--out",
  "curate train-classifier": "--out",
  "curate filter": "--out",
  "synth textbooks": "--out",
  "synth exercises": "--out",
  "decontam": "--out",
  "train": "--workdir",
  "eval": "--out",
}


@dataclasses.dataclass(frozen=True)
class Raw:
  """An input from outside the recipe: a file or folder, versioned by its path, sizes and modification
  times (never read to hash it), or by `version` when the recipe declares one (a bucket's path)."""

  path: str
  version: str = ""


@dataclasses.dataclass(frozen=True)
class Output:
  """Another step's output folder, or `subpath` inside it; versioned by that step's own hash."""

  step: str
  subpath: str = ""


@dataclasses.dataclass(frozen=True)
class ServiceURL:
  """The base URL of a stand-in server the recipe starts (`Service`); versioned by the service's
  command, not its port."""

  service: str


@dataclasses.dataclass(frozen=True)
class Service:
  """A server the recipe starts before the steps that use it and stops at the end, e.g. the
  rule-based annotator standing in for an LLM. `argv` holds "{port}" where the port goes; the
  server answers OpenAI's API at http://127.0.0.1:{port}/v1. `stand_in` says what it replaces
  (the report names it, so its numbers are never read as results)."""

  name: str
  argv: tuple[str, ...]
  stand_in: str


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The trainer's `data.mixture`: packed folders (other steps' outputs) with their weights, rendered
  as "PATH:W,PATH:W". `names` label the sources in the report (epochs per source)."""

  parts: tuple[tuple[Output, float], ...]
  names: tuple[str, ...] = ()


@dataclasses.dataclass
class Step:
  """One stage command. `args` maps flags (without --) to values: str / int / float / bool, a list
  (several values after one flag), `Raw`, `Output`, `ServiceURL`; the output flag is added by the
  runner. `info` is not hashed: what the report groups by (variant, seed, role). `launcher="slurm"`
  runs a train step through launch/slurm.sbatch. `version`: change it to redo a step whose code
  changed in a way its flags do not show."""

  name: str
  command: str
  args: dict[str, Any]
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  launcher: str = "local"
  version: str = ""

  def inputs(self) -> list[Raw | Output | ServiceURL]:
    found = []
    for value in self.args.values():
      for v in value if isinstance(value, list | tuple) else [value]:
        if isinstance(v, Mixture):
          found += [ref for ref, _ in v.parts]
        elif isinstance(v, Raw | Output | ServiceURL):
          found.append(v)
    return found


@dataclasses.dataclass
class Recipe:
  """A recipe's steps, in any order (the runner orders them by their inputs), and what its report says.

  `expected`: the direction the experiment expects, written before it runs (the report quotes it
  beside what happened). `wiring_test`: the data and model are too small to show an effect; the
  report says the run tests the wiring only."""

  name: str
  steps: list[Step]
  services: list[Service] = dataclasses.field(default_factory=list)
  variants: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> what its data is
  expected: str = ""
  wiring_test: bool = False
  missing: list[str] = dataclasses.field(default_factory=list)  # knobs to set before it can run (not dry)
  notes: list[str] = dataclasses.field(default_factory=list)
