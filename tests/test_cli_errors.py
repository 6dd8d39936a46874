"""Every entry point ends a user mistake in one line naming it, exit code 2, before jax compiles.

Each case runs `python -m MODULE ARGS` in a real subprocess (all cases at once, in threads, since
most of their time is importing jax). To cover a new entry point, add rows to CASES:
(module, args, a substring the last stderr line must hold). `{name}` in args and substrings is
one of the paths the `places` fixture makes. Every error line reads `python -m MODULE[ SUBCOMMAND]: error: ...`,
and every command names a misspelt flag that way (the BAD_FLAG rows).
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

from phi1_jax.data.tokenizer import train_tokenizer

from helpers import REPO, STDLIB, repo_env


EVAL, EXECUTE, CONVERT, PLAN = "phi1_jax.eval", "phi1_jax.eval.execute", "phi1_jax.convert", "phi1_jax.plan"
PACK, TOKENIZER = "phi1_jax.data.pack", "phi1_jax.data.tokenizer"
TRAIN, SWEEP, SAMPLE, SERVE = "phi1_jax.train", "phi1_jax.sweep", "phi1_jax.sample", "phi1_jax.serve"
CURATE, SYNTH, DECONTAM, FIXTURE = "phi1_jax.curate", "phi1_jax.synth", "phi1_jax.decontam", "phi1_jax.decontam.fixture"
RECIPE = "phi1_jax.recipe"
EVAL_OK = ["--benchmark=humaneval", "--checkpoint={ckpt}", "--out={tmp}/eval"]  # all good but the flag tried

CASES = [
  (RECIPE, ["run", "{missing}", "--root={tmp}/r"], "recipe file {missing} does not exist"),
  (RECIPE, ["run", "configs/recipes/tiny.py", "--root={file}"], "--root {file} exists and is not a folder"),
  (
    RECIPE,
    ["run", "configs/recipes/tiny.py", "--root={tmp}/r", "--set=seeds=0", "--set=pretrain.total_step=3"],
    "did you mean 'pretrain.total_steps'",
  ),
  (RECIPE, ["run", "configs/recipes/phi1.py", "--root={tmp}/r"], "cannot run yet: set --set llm.base_url"),
  (EVAL, ["--benchmark=humaneval", "--checkpoint={missing}", "--out={tmp}/e"], "--checkpoint={missing}: not found"),
  (EVAL, EVAL_OK[1:] + ["--benchmark=humanevl"], "invalid choice: 'humanevl'"),
  (EVAL, EVAL_OK + ["--n_samples=0"], "--n_samples=0: must be >= 1"),
  (EVAL, EVAL_OK + ["--limt=2"], "unrecognized arguments: --limt=2"),
  (EVAL, EVAL_OK[:2] + ["--out={file}/sub"], "--out={file}/sub: {file} is a file, not a folder"),
  (EVAL, EVAL_OK + ["--tokenizer={garbage}"], "{garbage}: not a SentencePiece model"),
  (EVAL, ["--benchmark=humaneval", "--checkpoint={emptyckpt}", "--out={tmp}/e"], "empty folder, not an Orbax"),
  (EXECUTE, ["--benchmark=humaneval", "--samples={missing}"], "samples file not found: {missing}"),
  (EXECUTE, ["--benchmark=humaneval", "--samples={tmp}"], "--samples={tmp}: is a folder"),
  (EXECUTE, ["--benchmark=humaneval", "--samples={garbage}"], "{garbage}:1: not JSON"),
  (EXECUTE, ["--benchmark=mbpp", "--samples={garbage}"], "--benchmark=mbpp needs --mbpp_path"),
  (CONVERT, [], "the following arguments are required: command"),
  (CONVERT, ["hf-to-orbax", "--hf_dir={missing}", "--out={tmp}/c"], "{missing}: not found"),
  (CONVERT, ["hf-to-orbax", "--hf_dir={badhf}", "--out={tmp}/c"], "{badhf}/config.json: not valid JSON"),
  (CONVERT, ["orbax-to-hf", "--checkpoint={file}", "--out={tmp}/c"], "{file}: not a checkpoint"),
  (CONVERT, ["orbax-to-hf", "--checkpoint={ckpt}", "--out={file}/x"], "--out {file}/x: {file} is a file"),
  (PLAN, ["--config=configs/tiyn.py"], "--config=configs/tiyn.py: no such config file"),
  (PLAN, ["--config=configs/tiny.py", "--config.optimizer.lrr=1"], "unknown config key 'lrr'"),
  (PLAN, ["--config=configs/tiny.py", "--config.total_steps=many"], "--config.total_steps=many"),
  (PLAN, ["--config=configs/tiny.py", "--devices=-1"], "--devices=-1"),
  (PLAN, ["--config={badconfig}"], "--config={badconfig}: line 3: NameError: name 'lr' is not defined"),
  (
    PACK,
    ["--input", "{missing}", "--tokenizer", "{tok}", "--seq_len", "8", "--out", "{tmp}/p"],
    "{missing}: not found",
  ),
  (PACK, ["--input", "{py}", "--tokenizer", "{tok}", "--seq_len", "8", "--out", "{file}/p"], "{file} is a file"),
  (
    PACK,
    ["--input", "{py}", "--tokenizer", "{garbage}", "--seq_len", "8", "--out", "{tmp}/p"],
    "--tokenizer: {garbage}: not a SentencePiece model",
  ),
  (PACK, ["--input", "{badgz}", "--tokenizer", "{tok}", "--seq_len", "8", "--out", "{tmp}/p"], "{badgz}: unreadable"),
  (
    PACK,
    ["--input", "{py}", "--tokeniser={tok}", "--seq_len", "8", "--out", "{tmp}/p"],
    "unrecognized arguments: --tokeniser={tok}",
  ),  # the misspelt flag, not the required one it hides
  (PACK, ["--input", "{py}", "--tokenizer", "{tok}", "--seq_len", "8"], "required: --out"),
  (
    TOKENIZER,
    ["train", "--input", "{py}", "--vocab_sise", "400", "--out", "{tmp}/t"],
    "unrecognized arguments: --vocab_sise",
  ),
  (TOKENIZER, ["train", "--input", "{py}", "--vocab_size", "400", "--out", "{file}"], "exists and is not a folder"),
  (TOKENIZER, ["train", "--input", "{py}", "--vocab_size", "400", "--out", "{tok}"], "already holds tokenizer.model"),
  (TOKENIZER, ["train", "--input", "{missing}", "--vocab_size", "400", "--out", "{tmp}/t"], "not found: {missing}"),
]

# Every command and subcommand, given a flag it does not have: the error names it, prefixed by the command.
BAD = "--no_such_flag=1"
BAD_FLAG = [
  (TRAIN, ["--config=configs/tiny.py", "--workdir={tmp}/t", BAD], "no_such_flag"),
  (PLAN, ["--config=configs/tiny.py", BAD], "no_such_flag"),
  (SWEEP, [BAD], f"unrecognized arguments: {BAD}"),
  (RECIPE, ["run", "configs/recipes/tiny.py", "--root={tmp}/r", BAD], f"unrecognized arguments: {BAD}"),
  (RECIPE, ["report", BAD], f"unrecognized arguments: {BAD}"),
  (SWEEP, ["report", BAD], f"unrecognized arguments: {BAD}"),
  (SAMPLE, [BAD], f"unrecognized arguments: {BAD}"),
  (SERVE, [BAD], f"unrecognized arguments: {BAD}"),
  (EVAL, [BAD], f"unrecognized arguments: {BAD}"),
  (EXECUTE, [BAD], f"unrecognized arguments: {BAD}"),
  (CONVERT, ["orbax-to-hf", BAD], f"unrecognized arguments: {BAD}"),
  (CURATE, [BAD], f"unrecognized arguments: {BAD}"),
  (CURATE, ["filter", BAD], f"unrecognized arguments: {BAD}"),
  (SYNTH, ["exercises", BAD], f"unrecognized arguments: {BAD}"),
  (DECONTAM, [BAD], f"unrecognized arguments: {BAD}"),
  (FIXTURE, [BAD], f"unrecognized arguments: {BAD}"),
  (PACK, [BAD], f"unrecognized arguments: {BAD}"),
  (TOKENIZER, ["train", BAD], f"unrecognized arguments: {BAD}"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
  """Paths the cases name: a real tokenizer and checkpoint layout, a plain file, garbage, and so on."""
  tmp = tmp_path_factory.mktemp("cli")
  tok = tmp / "tok"
  train_tokenizer([STDLIB / "json"], 400, tok)
  ckpt = tmp / "ckpt"  # passes every check made before the weights are read
  (ckpt / "params").mkdir(parents=True)
  (ckpt / "params" / "placeholder").write_text("")
  (ckpt / "model_config.json").write_text("{}")
  (ckpt / "tokenizer.model").write_bytes((tok / "tokenizer.model").read_bytes())
  empty = tmp / "emptyckpt"
  (empty / "params").mkdir(parents=True)
  (empty / "model_config.json").write_text("{}")
  (empty / "tokenizer.model").write_bytes((tok / "tokenizer.model").read_bytes())
  (tmp / "file").write_text("a file, not a folder\n")
  (tmp / "garbage").write_text("not json, not a model\n")
  (tmp / "badhf").mkdir()
  (tmp / "badhf" / "config.json").write_text("{bad")
  (tmp / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
  (tmp / "badconfig.py").write_text(
    "def get_config():\n  from phi1_jax.config import base_config\n  return base_config(lr)\n"
  )
  paths = {
    "tmp": tmp,
    "tok": tok,
    "ckpt": ckpt,
    "emptyckpt": empty,
    "file": tmp / "file",
    "garbage": tmp / "garbage",
    "badhf": tmp / "badhf",
    "badgz": tmp / "bad.jsonl.gz",
    "missing": tmp / "no" / "such",
    "py": STDLIB / "json",
    "badconfig": tmp / "badconfig.py",
  }
  return {k: str(v) for k, v in paths.items()}


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
  # JAX_LOG_COMPILES makes any compilation print a line, so the test sees work starting before the check.
  env = repo_env(JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )


def _problem(case, proc: subprocess.CompletedProcess, places: dict) -> str | None:
  """What is wrong with how a case ended, or None."""
  expected = case[2].format(**places)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  if proc.returncode != 2:
    return f"exit code {proc.returncode}"
  if "Traceback" in proc.stderr:
    return "a traceback"
  if "Compiling" in proc.stderr:
    return "jax compiled before the check"
  if not lines or expected not in lines[-1]:
    return f"last line {lines[-1] if lines else ''!r} lacks {expected!r}"
  subcommand = case[1][0] if case[1] and not case[1][0].startswith("-") else None
  prefix = f"python -m {case[0]}{' ' + subcommand if subcommand else ''}: error: "
  if not lines[-1].startswith(prefix):
    return f"last line {lines[-1]!r} does not start with {prefix!r}"
  return None


def _failures(cases, places) -> tuple[set[str], list[str]]:
  """Runs the cases at once; the modules of those that ended wrong, and what was wrong with each."""

  def run(case):
    return _run(case[0], [a.format(**places) for a in case[1]])

  with concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
    procs = list(pool.map(run, cases))
  failing, failures = set(), []
  for case, proc in zip(cases, procs):
    problem = _problem(case, proc, places)
    if problem:
      failing.add(case[0])
      failures.append(f"python -m {case[0]} {' '.join(case[1])}: {problem}\n{proc.stderr[-1500:]}")
  return failing, failures


@pytest.mark.slow  # 33 processes that import jax (~30 CPU-s); the fast tier keeps each command's own error tests
def test_every_entry_point_ends_a_mistake_in_one_line(places):
  # One test, not one per case: under pytest-xdist a shared fixture would run every case in each worker.
  failing, failures = _failures(CASES, places)
  assert not failures, "\n\n".join(failures)
  assert not (Path(places["tmp"]) / "e").exists() and not (Path(places["tmp"]) / "c").exists()


@pytest.mark.slow  # 16 more processes that import jax
def test_every_command_names_a_misspelt_flag_in_its_own_words(places):
  failing, failures = _failures(BAD_FLAG, places)
  assert not failing, "\n\n".join(failures)
