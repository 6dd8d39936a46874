r"""The paper's experiment as one command: a recipe's steps run in order, each cached by what it was made from.

    python -m phi1_jax.recipe run configs/recipes/tiny.py --root=runs/recipe [--dry_run] [--set KEY=VALUE ...]
    python -m phi1_jax.recipe report --root=runs/recipe [--recipe=NAME]

A recipe (configs/recipes/*.py) defines get_config() (its knobs; --set changes them, type-checked)
and get_recipe(config), the steps: each one command of the project's stages with its flags and
inputs. A step's output folder, ROOT/<command>/<hash>, is named by a hash of its settings and its
inputs' versions, so a finished step is reused by any recipe that asks for the same thing, a
killed run resumes its interrupted step and redoes nothing finished, and a changed setting reruns
that step and what reads from it. Each folder holds the stage's output (out/), its log (log.txt)
and provenance.json (settings, input versions, command line, code version, attempts, counts).
--dry_run prints the steps, which are cached, why each other one must run, and what the run costs.
`report` writes ROOT/report.md and ROOT/report.png (in the manner of the paper's Figure 2.1).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from phi1_jax.cli import OneLineParser, UserError, out_dir_problem, report_error, run_command
from phi1_jax.recipe import graph as graph_lib
from phi1_jax.recipe import run as run_lib
from phi1_jax.sweep import spec as spec_lib

PROG = "python -m phi1_jax.recipe"


def _run_parser() -> OneLineParser:
  p = OneLineParser(prog=f"{PROG} run", description=__doc__)
  p.add_argument("recipe", help="recipe file (configs/recipes/*.py)")
  p.add_argument("--root", required=True, help="folder of every step's output, shared by recipes")
  p.add_argument("--dry_run", action="store_true", help="print the steps, what is cached, why the rest runs, the cost")
  p.add_argument("--set", action="append", default=[], help="KEY=VALUE: change a knob of the recipe's get_config()")
  p.add_argument("--sbatch_args", default="", help="sbatch options for the steps the recipe runs on SLURM")
  p.add_argument("--quiet", action="store_true", help="stages' output to their logs only, not also here")
  return p


def _report_parser() -> OneLineParser:
  p = OneLineParser(prog=f"{PROG} report")
  p.add_argument("--root", required=True)
  p.add_argument("--recipe", default="", help="which recipe run under ROOT (default: the only one)")
  return p


def load_recipe(path: str, sets: list[str]):
  """(recipe, its config as a dict) from a recipe file with --set overrides applied."""
  if not Path(path).is_file():
    raise UserError(f"recipe file {path} does not exist")
  overrides = [spec_lib.parse_set(s) for s in sets]
  spec = importlib.util.spec_from_file_location(f"recipe_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    raise UserError(f"recipe file {path}: {type(e).__name__}: {e}") from None
  for name in ("get_config", "get_recipe"):
    if not callable(getattr(module, name, None)):
      raise UserError(f"recipe file {path} defines no {name}()")
  base = module.get_config()
  for key, _ in overrides:
    spec_lib.check_key(base, key.removeprefix("config."), f"--set {key}")
  config = spec_lib.load_config(path, [(k.removeprefix("config."), v) for k, v in overrides])
  try:
    recipe = module.get_recipe(config)
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"recipe file {path}: get_recipe: {e}") from None
  return recipe, config.to_dict()


def run(argv: list[str]) -> int:
  args = _run_parser().parse_args(argv)
  problem = out_dir_problem(args.root)
  if problem:
    raise UserError(f"--root {args.root} {problem}")
  recipe, settings = load_recipe(args.recipe, args.set)
  root = Path(args.root)
  try:
    graph = graph_lib.Graph(recipe, root)
  except ValueError as e:
    raise UserError(f"recipe {recipe.name}: {e}") from None
  previous = (run_lib.read_index(root, recipe.name) or {}).get("steps")
  rows = run_lib.plan(graph, previous)
  to_run = [r for r in rows if r[1] == "run"]
  print(f"recipe {recipe.name}: {len(rows)} steps under {root}, {len(rows) - len(to_run)} cached, {len(to_run)} to run")
  width = max(len(name) for name, _, _ in rows)
  for name, action, reason in rows:
    step = graph.by_name[name]
    line = f"  {name:<{width}}  {step.command:<24} {graph.folder(name).relative_to(root)}  {action}"
    print(line + (f": {reason}" if reason else ""))
  blockers = [f"set --set {knob}" for knob in recipe.missing]
  blockers += [f"input {path} does not exist" for path in graph.missing_inputs]
  if args.dry_run:
    from phi1_jax.recipe import cost

    if blockers:
      print("before it can run: " + "; ".join(blockers))
    print("cost (of every step, cached or not):")
    for line in cost.lines(cost.estimate(graph.steps)):
      print(f"  {line}")
    return 0
  if blockers:
    raise UserError(f"recipe {recipe.name} cannot run yet: " + "; ".join(blockers))
  run_lib.write_index(graph, args.recipe, settings)
  if not to_run:
    print(f"recipe {recipe.name}: nothing to do, every step is done; `{PROG} report --root={root}` for the report")
    return 0
  rc = run_lib.execute(graph, rows, sbatch_args=args.sbatch_args, echo=not args.quiet)
  if rc == 0:
    print(f"recipe {recipe.name}: every step done; `{PROG} report --root={root}` writes the report")
  return rc


def report(argv: list[str]) -> int:
  args = _report_parser().parse_args(argv)
  from phi1_jax.recipe import results

  root = Path(args.root)
  names = sorted(p.stem for p in (root / "recipes").glob("*.json"))
  if not names:
    raise UserError(f"--root {root} holds no recipe run (no {root}/recipes/*.json)")
  if args.recipe and args.recipe not in names:
    raise UserError(f"--recipe {args.recipe}: not run under {root} (found: {', '.join(names)})")
  if not args.recipe and len(names) > 1:
    raise UserError(f"--root {root} holds several recipe runs ({', '.join(names)}); choose one with --recipe")
  md, png = results.write_report(root, args.recipe or names[0])
  print(f"{md}\n{png}")
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  commands = {"run": run, "report": report}
  if not argv or argv[0] in ("-h", "--help"):
    print(__doc__)
    return 0 if argv else 2
  if argv[0] not in commands:
    return report_error(PROG, f"unknown command {argv[0]!r}: run or report")
  try:
    return commands[argv[0]](argv[1:])
  except UserError as e:
    return report_error(f"{PROG} {argv[0]}", e)


if __name__ == "__main__":
  sys.exit(run_command(main, "finished steps are kept and the interrupted one resumes"))
