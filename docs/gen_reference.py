"""The flag reference, generated from the commands themselves: every `--help` as the user sees it.

    python docs/gen_reference.py > reference.md   # what the docs build writes as reference.md

Also an mkdocs hook (`hooks:` in mkdocs.yml): `on_files` adds the page to the build without
writing it into docs/. The generation runs in one child process: the commands are run in turn
under runpy with `--help` (argparse and absl print their help and exit before any work), so jax
is imported once, and the build process keeps none of their flags or signal handlers.
Subcommands are found from the parser that printed the help, so COMMANDS lists top-level modules only.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The one list to change when a command moves: (module, what it does[, subcommands argparse does not
# declare]), in the docs' reading order.
COMMANDS = [
  ("phi1_jax.train", "train or finetune a model (absl flags; config fields as `--config.KEY=VALUE`)"),
  (
    "phi1_jax.recipe",
    "the paper's experiment as one command: steps cached by content, a Figure 2.1 report",
    ["run", "report"],
  ),
  ("phi1_jax.plan", "compile the train step for a mesh: memory and FLOPs per device"),
  ("phi1_jax.sweep", "grid and random sweeps of trainer runs, here or on SLURM", ["report", "trial"]),
  ("phi1_jax.data.tokenizer", "train or inspect a SentencePiece tokenizer"),
  ("phi1_jax.data.pack", "tokenize documents into ArrayRecord shards for training"),
  ("phi1_jax.curate", "curation: LLM annotation, embeddings, classifier, filter"),
  ("phi1_jax.synth", "synthetic textbooks and exercises"),
  ("phi1_jax.decontam", "remove HumanEval / MBPP look-alikes from training data"),
  ("phi1_jax.decontam.fixture", "the labelled look-alike fixture decontamination is measured on"),
  ("phi1_jax.eval", "HumanEval, MBPP, Unconventional, HumanEval+, MBPP+ pass@k of a checkpoint"),
  ("phi1_jax.eval.execute", "score completions from any model in the sandbox"),
  ("phi1_jax.sample", "sample from a checkpoint"),
  ("phi1_jax.serve", "the OpenAI-compatible server"),
  ("phi1_jax.convert", "Hugging Face <-> phi1_jax checkpoints"),
]


class _Printed(Exception):
  """Raised after a parser printed its help, in case the command would go on."""


def command_help(module: str, argv: list[str]) -> tuple[str, argparse.ArgumentParser | None]:
  """What `python -m MODULE ARGV --help` prints, and the argparse parser that printed it (None: absl)."""
  printed: list[argparse.ArgumentParser] = []
  print_help = argparse.ArgumentParser.print_help

  def recording_print_help(self, file=None):
    printed.append(self)
    print_help(self, file)

  out = io.StringIO()
  absl_flags = _absl_flag_names()
  old_argv = sys.argv
  sys.argv = [f"python -m {module}", *argv, "--help"]
  argparse.ArgumentParser.print_help = recording_print_help
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
      runpy.run_module(module, run_name="__main__", alter_sys=True)
  except (SystemExit, _Printed):
    pass
  finally:
    argparse.ArgumentParser.print_help = print_help
    sys.argv = old_argv
    _forget_absl_flags(absl_flags)
  text = out.getvalue().replace(f"{ROOT}/", "")  # absl names each flag's file by its absolute path
  return text.strip("\n"), (printed[-1] if printed else None)


def _absl_flag_names() -> set[str]:
  if "absl.flags" not in sys.modules:
    return set()
  from absl import flags

  return set(flags.FLAGS)


def _forget_absl_flags(before: set[str]) -> None:
  """Drops the flags the last command defined, and the modules that defined them, so the next absl
  command defines its own again (plan imports the trainer's --config: it must be defined anew)."""
  if "absl.flags" not in sys.modules:
    return
  from absl import flags

  for name in set(flags.FLAGS) - before:
    module = flags.FLAGS.find_module_defining_flag(name) or ""
    if module.startswith("absl"):
      continue  # --help and friends: absl.app defines them once
    with contextlib.suppress(AttributeError):
      delattr(flags.FLAGS, name)
    if module.startswith("phi1_jax.") and sys.modules.pop(module, None):
      parent, _, child = module.rpartition(".")  # `from parent import child` looks here first
      with contextlib.suppress(AttributeError):
        delattr(sys.modules[parent], child)
  flags.FLAGS.unparse_flags()


def subcommands(parser: argparse.ArgumentParser | None) -> list[str]:
  if parser is None:
    return []
  return [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]


def render() -> str:
  lines = [
    "# Command reference",
    "",
    "Every command's `--help`, generated from the code when the docs are built (`docs/gen_reference.py`).",
    "",
    "| command | job |",
    "|---|---|",
  ]
  lines += [f"| [`python -m {m}`](#{m.replace('.', '')}) | {job} |" for m, job, *_ in COMMANDS]
  lines += ["| [config fields](#trainer-config-fields) | `--config.KEY=VALUE` of train, plan and sweep |"]
  for module, _, *extra in COMMANDS:
    text, parser = command_help(module, [])
    lines += ["", f"## {module}", "", "```text", text, "```"]
    for sub in subcommands(parser) + (extra[0] if extra else []):
      text, _ = command_help(module, [sub])
      lines += ["", f"### {module} {sub}", "", "```text", text, "```"]
  from phi1_jax import config

  lines += [
    "",
    "## Trainer config fields",
    "",
    "`configs/*.py` start from `phi1_jax.config.base_config()` and change what they need; every field",
    "can be overridden as `--config.KEY=VALUE`. The defaults, from `phi1_jax/config.py`:",
    "",
    "```python",
    inspect.getsource(config.base_config).rstrip(),
    "",
    inspect.getsource(config.model_config).rstrip(),
    "```",
  ]
  return "\n".join(lines) + "\n"


def on_files(files, config):
  """mkdocs hook: reference.md, generated in a child process (a few seconds: jax is imported once)."""
  from mkdocs.structure.files import File

  proc = subprocess.run(
    [sys.executable, __file__], cwd=ROOT, capture_output=True, text=True, env=_child_env(), timeout=300
  )
  if proc.returncode != 0:
    raise RuntimeError(f"docs/gen_reference.py failed:\n{proc.stderr[-3000:]}")
  files.append(File.generated(config, "reference.md", content=proc.stdout))
  return files


def _child_env() -> dict:
  import os

  env = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="100")  # the help's width, whatever the terminal's
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  return env


if __name__ == "__main__":
  sys.stdout.write(render())
