"""A sweep's plan: --grid / --space / --set parsed, type-checked against the config, expanded into
named trials, kept in ROOT/sweep.json.

Every value goes through ml-collections' own override parser (the one the trainer uses), so a
value the plan accepts is a value the trainer accepts; then each trial's whole config passes the
trainer's own checks (`phi1_jax.train.checks`, the model shape, data paths) before anything runs.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import random
import re
import time
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from phi1_jax.cli import UserError

FORMAT = "phi1_jax.sweep/v1"
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
_KEY = r"(?:config\.)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
_MAX_VALUE_CHARS = 40  # of one value in a workdir name


# ----------------------------------------------------------------------------- config


def load_config(config_path: str, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
  """The config file with `--config.KEY=VALUE` overrides applied, parsed as the trainer parses them."""
  if not Path(config_path).is_file():
    raise UserError(f"config file {config_path} does not exist")
  argv = ["sweep", f"--config={config_path}", *(f"--config.{k}={v}" for k, v in overrides)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
  try:
    values(argv)
  except flags.Error as e:
    # "flag --config.total_steps=2.5: invalid literal for int() with base 10: '2.5'"
    raise UserError(str(e).splitlines()[0]) from None
  except (AttributeError, KeyError) as e:  # keys are checked first (check_key); this is a fallback
    raise UserError(f"config override: {e}") from None
  except Exception as e:  # the config file itself failed to import
    raise UserError(f"config file {config_path}: {type(e).__name__}: {e}") from None
  return values.config


def check_key(config: ml_collections.ConfigDict, key: str, origin: str) -> type:
  """The type of the config field `key` (a.b.c); a UserError naming `origin` if there is none."""
  node, path = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      hint = difflib.get_close_matches(part, fields, n=1)
      where = f" in config.{'.'.join(path)}" if path else ""
      raise UserError(
        f"{origin}: unknown config key {key!r}{where}" + (f" (did you mean {'.'.join(path + hint)!r}?)" if hint else "")
      )
    node, path = node[part], path + [part]
  if isinstance(node, ml_collections.ConfigDict):
    raise UserError(
      f"{origin}: {key!r} is a group of fields; sweep one of them: " + ", ".join(f"{key}.{f}" for f in node.keys())
    )
  return type(node)


def value_at(config, key: str):
  for part in key.split("."):
    config = config[part]
  return list(config) if isinstance(config, tuple) else config


# ----------------------------------------------------------------------------- specs


def parse_grid(spec: str) -> tuple[str, list[str]]:
  """'optimizer.lr=1e-3,3e-3' -> key, values. Values holding commas are separated by '|' instead."""
  m = re.fullmatch(_KEY + r"=(.*)", spec.strip(), re.S)
  if not m or not m.group(2).strip():
    raise UserError(f"--grid {spec!r}: want KEY=V1,V2,... (e.g. optimizer.lr=1e-3,3e-3)")
  key, rest = m.group(1), m.group(2)
  values = [v.strip() for v in rest.split("|" if "|" in rest else ",")]
  if any(not v for v in values):
    raise UserError(f"--grid {spec!r}: empty value")
  if len(set(values)) < len(values):
    raise UserError(f"--grid {spec!r}: a value is repeated")
  return key, values


def parse_space(spec: str) -> tuple[str, str, list[str]]:
  """'optimizer.lr=loguniform(1e-4,1e-2)' -> key, distribution, argument strings."""
  m = re.fullmatch(_KEY + r"=(\w+)\((.*)\)", spec.strip(), re.S)
  if not m:
    raise UserError(
      f"--space {spec!r}: want KEY=DIST(ARGS) with DIST one of {', '.join(DISTRIBUTIONS)} "
      "(e.g. optimizer.lr=loguniform(1e-4,1e-2))"
    )
  key, dist, args = m.group(1), m.group(2), [a.strip() for a in m.group(3).split(",")]
  if dist not in DISTRIBUTIONS:
    raise UserError(f"--space {spec!r}: unknown distribution {dist!r} (known: {', '.join(DISTRIBUTIONS)})")
  if any(not a for a in args):
    raise UserError(f"--space {spec!r}: empty argument")
  if dist == "choice":
    return key, dist, args
  if len(args) != 2:
    raise UserError(f"--space {spec!r}: {dist} takes two bounds, LOW,HIGH")
  try:
    low, high = (int(a) for a in args) if dist == "randint" else (float(a) for a in args)
  except ValueError:
    raise UserError(f"--space {spec!r}: bounds must be {'integers' if dist == 'randint' else 'numbers'}") from None
  if not low < high:
    raise UserError(f"--space {spec!r}: LOW must be below HIGH")
  if dist == "loguniform" and low <= 0:
    raise UserError(f"--space {spec!r}: loguniform bounds must be positive")
  return key, dist, args


def parse_set(spec: str) -> tuple[str, str]:
  m = re.fullmatch(_KEY + r"=(.*)", spec.strip(), re.S)
  if not m:
    raise UserError(f"--set {spec!r}: want KEY=VALUE (e.g. total_steps=200)")
  return m.group(1), m.group(2)


def sample(dist: str, args: list[str], field_type: type, rng: random.Random) -> str:
  """One draw, as the override string. Floats keep 4 significant digits (readable names)."""
  if dist == "choice":
    return rng.choice(args)
  if dist == "randint":
    return str(rng.randint(int(args[0]), int(args[1])))
  low, high = float(args[0]), float(args[1])
  x = math.exp(rng.uniform(math.log(low), math.log(high))) if dist == "loguniform" else rng.uniform(low, high)
  return str(round(x)) if field_type is int else repr(float(f"{x:.4g}"))


# ----------------------------------------------------------------------------- plan


def _slug(value) -> str:
  text = {True: "true", False: "false"}.get(value, value) if isinstance(value, bool) else value
  text = repr(text) if isinstance(text, float) else str(text)
  text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"
  return text[:_MAX_VALUE_CHARS]


def short_names(keys: list[str]) -> dict[str, str]:
  """Each key's last part where that is unambiguous ('optimizer.lr' -> 'lr'), else the whole key."""
  leaves = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}


def trial_name(index: int, count: int, overrides: dict, short: dict[str, str]) -> str:
  """'02_lr=0.003,warmup_steps=10': the index keeps names unique and in plan order."""
  width = max(2, len(str(count - 1)))
  return f"{index:0{width}d}_" + ",".join(f"{short[k]}={_slug(v)}" for k, v in overrides.items())


def _check_trial(config, name: str) -> None:
  """The trainer's own checks of a whole config, without starting it."""
  import jax

  jax.config.update("jax_platforms", "cpu")  # this process never trains; leave accelerators to the trials
  from phi1_jax.train import checks, inputs

  try:
    checks.check_config(config)
    checks.model_config_of(config)
    if config.data.mixture.strip() != "stdlib":
      inputs.resolve_data(config, log=lambda msg: None)
  except UserError as e:
    raise UserError(f"trial {name}: {e}") from None


def make_plan(
  config_path: str, grid: list[str], space: list[str], random_count: int, seed: int, sets: list[str]
) -> dict:
  """Parses and checks everything; returns the plan (nothing is written)."""
  if random_count < 0:
    raise UserError(f"--random={random_count} must be positive")
  if space and not random_count:
    raise UserError("--space needs --random=N (how many draws)")
  if random_count and not space:
    raise UserError("--random needs at least one --space=KEY=DIST(ARGS)")
  if not grid and not random_count:
    raise UserError("nothing to sweep: give --grid=KEY=V1,V2 and/or --random=N with --space")
  set_items = [parse_set(s) for s in sets]
  grid_items = [parse_grid(s) for s in grid]
  space_items = [parse_space(s) for s in space]

  base = load_config(config_path, [])
  seen = {}
  for origin, key in (
    [(f"--set {k}", k) for k, _ in set_items]
    + [(f"--grid {k}", k) for k, _ in grid_items]
    + [(f"--space {k}", k) for k, _, _ in space_items]
  ):
    check_key(base, key, origin)
    if key in seen:
      raise UserError(f"{origin}: {key} is also given by {seen[key]}")
    seen[key] = origin
  base = load_config(config_path, set_items)

  # Each value on its own first, so an error names the value.
  for key, values in grid_items:
    for v in values:
      try:
        load_config(config_path, set_items + [(key, v)])
      except UserError as e:
        raise UserError(f"--grid {key}: value {v!r}: {e}") from None
  for key, dist, args in space_items:
    field_type = type(value_at(base, key))
    if dist != "choice" and (field_type not in (int, float)):
      raise UserError(f"--space {key}: {dist} draws numbers, but {key} is a {field_type.__name__}; use choice(...)")
    for v in args if dist == "choice" else [sample(dist, [a, a], field_type, random.Random(0)) for a in args]:
      try:
        load_config(config_path, set_items + [(key, v)])
      except UserError as e:
        raise UserError(f"--space {key}: value {v!r}: {e}") from None

  rng = random.Random(seed)
  draws = [
    [(k, sample(d, a, type(value_at(base, k)), rng)) for k, d, a in space_items] for _ in range(random_count)
  ] or [[]]
  points = [list(g) + r for r in draws for g in itertools.product(*[[(k, v) for v in vs] for k, vs in grid_items])]

  keys = [k for k, _ in grid_items] + [k for k, _, _ in space_items]
  short = short_names(keys)
  trials, names = [], set()
  for i, point in enumerate(points):
    config = load_config(config_path, set_items + point)
    overrides = {k: value_at(config, k) for k, _ in point}
    name = trial_name(i, len(points), overrides, short)
    assert name not in names, name  # the index makes names unique
    names.add(name)
    _check_trial(config, name)
    trials.append(
      dict(
        name=name,
        overrides=overrides,
        args=[f"--config.{k}={v}" for k, v in point],
        end_step=min(config.run_until_step or config.total_steps, config.total_steps),
        tokens_per_step=config.batch_size * config.seq_len,
      )
    )
  return dict(
    format=FORMAT,
    config=str(Path(config_path).absolute()),
    set=[f"--config.{k}={v}" for k, v in set_items],
    grid=grid,
    space=space,
    random=random_count,
    seed=seed,
    swept=keys,
    trials=trials,
  )


def trainer_args(plan: dict, trial: dict, root: Path) -> list[str]:
  """The trainer's flags for one trial: config, its W&B run name and group (the trial's and the sweep's
  folder names; used when wandb.project is set, and a --set of them wins), the common --set overrides,
  the trial's, workdir."""
  wandb = [f"--config.wandb.group={root.name}", f"--config.wandb.name={trial['name']}"]
  return [f"--config={plan['config']}", *wandb, *plan["set"], *trial["args"], f"--workdir={root / trial['name']}"]


def _identity(plan: dict) -> dict:
  return dict(config=plan["config"], set=plan["set"], trials=[(t["name"], t["args"]) for t in plan["trials"]])


def save_plan(root: Path, plan: dict, command: list[str]) -> None:
  """Writes ROOT/sweep.json, or checks that the one there is this plan (a rerun)."""
  path = root / "sweep.json"
  if path.exists():
    old = read_plan(root)
    if _identity(old) != _identity(plan):
      what = dict(config="config file", set="--set overrides", trials="trials")
      differs = [what[k] for k in what if _identity(old)[k] != _identity(plan)[k]]
      raise UserError(
        f"{path} holds another sweep (other {' and '.join(differs)}); rerun with its flags, or give a new --root"
      )
    return
  root.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(dict(plan, created=time.time(), command=command), indent=1))
  tmp.replace(path)


def read_plan(root: Path) -> dict:
  path = Path(root) / "sweep.json"
  if not path.is_file():
    raise UserError(f"{path} does not exist: not a sweep root")
  try:
    plan = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from None
  if plan.get("format") != FORMAT:
    raise UserError(f"{path}: format {plan.get('format')!r}, expected {FORMAT!r}")
  return plan
