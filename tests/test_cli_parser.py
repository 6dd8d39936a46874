"""cli.OneLineParser: a misspelt flag is named even when a required flag is missing too."""

import pytest

from phi1_jax.cli import OneLineParser


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
