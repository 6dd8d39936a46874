"""cli.OneLineParser: a misspelt flag is named even when a required flag is missing too; every command's
--help shows its flags' defaults."""

import concurrent.futures
import subprocess
import sys

import pytest

from helpers import REPO, repo_env
from phi1_jax.cli import OneLineParser


# Every command (and subcommand) with a flag whose default its --help must show.
HELP_SHOWS = [
  ("train", [], "--workdir"),  # absl: lists the trainer's own flags
  ("plan", [], "(default: '0')"),
  ("sweep", [], "(default: local)"),
  ("sweep", ["report"], "(default: final_eval_loss)"),
  ("sample", [], "(default: 128)"),
  ("serve", [], "(default: 8000)"),
  ("eval", [], "(default: 384)"),
  ("eval.execute", [], "(default: 1024)"),
  ("convert", [], "orbax-to-hf"),
  ("convert", ["orbax-to-hf"], "--checkpoint CHECKPOINT"),
  ("curate", [], "train-classifier"),
  ("curate", ["annotate"], "(default: 0.001)"),
  ("synth", ["textbooks"], "(default: 2048)"),
  ("decontam", [], "(default: 13)"),
  ("decontam.fixture", [], "(default: 2000)"),
  ("data.pack", [], "(default: 0.01)"),
  ("data.tokenizer", ["train"], "(default: 200000)"),
]


def _error(parser, argv, capsys) -> str:
  with pytest.raises(SystemExit) as stop:
    parser.parse_args(argv)
  assert stop.value.code == 2
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1, err
  return err


def test_unknown_flag_is_named_beside_a_missing_required_one(capsys):
  parser = OneLineParser(prog="serve")
  parser.add_argument("--checkpoint", required=True)
  assert _error(parser, ["--checkpont=ckpt"], capsys) == (
    "serve: error: unrecognized arguments: --checkpont=ckpt; the following arguments are required: --checkpoint\n"
  )
  assert _error(parser, [], capsys) == "serve: error: the following arguments are required: --checkpoint\n"


def test_unknown_flag_of_a_subcommand_is_named(capsys):
  root = OneLineParser(prog="curate")
  commands = root.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
  commands.add_parser("annotate").add_argument("--input", required=True)
  assert "unrecognized arguments: --inptu docs; the following arguments are required: --input" in _error(
    root, ["annotate", "--inptu", "docs"], capsys
  )
  assert "unrecognized arguments: --bogus; the following arguments are required: command" in _error(
    root, ["--bogus"], capsys
  )


def test_help_shows_each_default_once_and_hides_old_names(capsys):
  parser = OneLineParser(prog="cmd")
  parser.add_argument("--rate", type=float, default=0.5, help="a share")
  parser.add_argument("--seed", type=int, default=3)  # no help text: the default still shows
  parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
  parser.add_argument("--name", default=None, help="unset by default")
  parser.add_argument("--verbose", action="store_true", help="say more")
  parser.add_argument("--checkpoint", required=True, help="a folder")
  parser.add_old_name("--ckpt", "--checkpoint")
  with pytest.raises(SystemExit) as stop:
    parser.parse_args(["--help"])
  assert stop.value.code == 0
  lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("--")}
  assert lines["--rate"].endswith("a share (default: 0.5)")
  assert lines["--seed"].endswith("(default: 3)")
  assert lines["--workers"].endswith("processes (default: one per CPU)")  # its own words, not a second default
  assert "default:" not in lines["--name"] + lines["--verbose"] + lines["--checkpoint"]
  assert "--ckpt" not in lines
  assert parser.parse_args(["--ckpt=a"]).checkpoint == parser.parse_args(["--ckpt", "a"]).checkpoint == "a"


@pytest.mark.slow  # 17 processes that import jax: ~10 s on two idle cores, far more on a busy machine
def test_every_command_help_shows_its_defaults():
  env = repo_env(JAX_PLATFORMS="cpu", COLUMNS="200")

  def run(case):
    module, args, _ = case
    command = [sys.executable, "-m", f"phi1_jax.{module}", *args, "--help"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

  with concurrent.futures.ThreadPoolExecutor(len(HELP_SHOWS)) as pool:  # most of the time is importing jax
    procs = list(pool.map(run, HELP_SHOWS))
  failing = {
    f"{module} {' '.join(args)}".strip(): f"exit {proc.returncode}, lacks {shown!r}"
    for (module, args, shown), proc in zip(HELP_SHOWS, procs)
    if proc.returncode != 0 or shown not in proc.stdout
  }
  assert not failing, failing
  assert "--ckpt" not in procs[HELP_SHOWS.index(("convert", ["orbax-to-hf"], "--checkpoint CHECKPOINT"))].stdout
