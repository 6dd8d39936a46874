"""`python -m phi1_jax.eval` end to end, its refusals, the trainer hooks and sample_texts.

A tiny random model is saved with the converter's `save_params`; the tokenizer is a real
SentencePiece model trained here on a stdlib package.
"""

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1_jax.decontam import report as report_lib
from phi1_jax.decontam.index import METHODS
from phi1_jax.data.tokenizer import load_tokenizer, train_tokenizer
from phi1_jax.eval import __main__ as eval_cli
from phi1_jax.eval import harness
from phi1_jax.eval.problems import load_humaneval
from phi1_jax.model import checkpoint
from phi1_jax.model.phi import ModelConfig, Phi, model_from_params
from phi1_jax.inference.sampler import generate, sample_texts

from helpers import STDLIB, repo_env

CFG = ModelConfig(
  vocab_size=512, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64, rotary_dim=4, max_seq_len=1024
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
  """A converter-layout checkpoint (params/ + model_config.json) with tokenizer.model beside it."""
  d = tmp_path_factory.mktemp("ckpt") / "tiny"
  params = nnx.to_pure_dict(nnx.state(Phi(CFG, rngs=nnx.Rngs(0)), nnx.Param))
  checkpoint.save_params(d, CFG, jax.tree.map(np.asarray, params))
  train_tokenizer([STDLIB / "json"], 400, d)
  return d


@pytest.fixture(scope="module")
def model_and_tokenizer(ckpt):
  return model_from_params(*checkpoint.load_params(ckpt)), load_tokenizer(ckpt)


def test_eval_command_end_to_end(ckpt, tmp_path, capsys):
  out = tmp_path / "eval"
  cmd = [
    sys.executable,
    "-m",
    "phi1_jax.eval",
    f"--checkpoint={ckpt}",
    "--benchmark=humaneval",
    "--limit=3",
    f"--out={out}",
    "--max_new_tokens=24",
    "--batch_size=3",
    "--workers=2",
    "--canonical_loss",
  ]
  env = repo_env(JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "sampling" in proc.stderr and "sample/s" in proc.stderr  # tqdm progress with a rate

  samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
  assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
  assert all(isinstance(s["completion"], str) for s in samples)
  results = [json.loads(l) for l in (out / "samples.jsonl_results.jsonl").read_text().splitlines()]
  assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
  assert all({"completion", "passed", "result"} <= set(r) for r in results)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["benchmark"] == "humaneval" and summary["n_samples_total"] == 3 and summary["n_problems"] == 3
  assert summary["n_samples_per_problem"] == 1 and "n_samples" not in summary
  assert summary["pass@1"] == 0.0 and "pass@10" not in summary  # pass@k only where n >= k
  assert summary["temperature"] == 0.0 and summary["checkpoint"] == str(ckpt)
  # the canonical solutions' loss: what the harness gives for the same checkpoint, loaded the one way
  model, tok = checkpoint.load_model_and_tokenizer(ckpt)
  want = harness.humaneval_canonical_loss(model, tok, limit=3, seq_len=CFG.max_seq_len)
  assert summary["canonical_loss"] == pytest.approx(want, rel=1e-5) and summary["canonical_loss_problems"] == 3
  assert math.isfinite(summary["canonical_loss"]) and summary["canonical_loss"] > 0
  headline = json.loads(proc.stdout.strip().splitlines()[-1])
  assert headline == {"pass@1": 0.0, "canonical_loss": summary["canonical_loss"], "canonical_loss_problems": 3}
  # a setting: the same command again has nothing to do; without the flag, the folder is refused
  capsys.readouterr()
  assert eval_cli.main(cmd[3:]) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == headline
  assert eval_cli.main([a for a in cmd[3:] if a != "--canonical_loss"]) == 2
  assert "other settings (canonical_loss True -> None)" in capsys.readouterr().err


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--n_samples=0"], "--n_samples=0"),
    (["--n_samples=5"], "--temperature=0"),
    (["--temperature=0.8", "--top_p=0"], "--top_p=0"),
    (["--limit=0"], "--limit=0"),
    (["--k=1,x"], "--k="),
    (["--benchmark=mbpp"], "--mbpp_path"),
    (["--benchmark=mbpp", "--mbpp_path=/nonexistent/mbpp.jsonl"], "/nonexistent/mbpp.jsonl"),
    (["--tokenizer=/nonexistent/tok"], "--tokenizer"),
    (["--canonical_loss", "--benchmark=unconventional"], "--canonical_loss"),
  ],
)
def test_bad_flags_fail_in_one_line(ckpt, tmp_path, capsys, flags, message):
  args = [f"--checkpoint={ckpt}", "--benchmark=humaneval", f"--out={tmp_path / 'o'}"]
  overridden = {f.split("=")[0] for f in flags}
  args = [a for a in args if a.split("=")[0] not in overridden] + flags
  assert eval_cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("python -m phi1_jax.eval: error:") and message in err[0], err
  assert not (tmp_path / "o").exists()


def test_canonical_loss_needs_a_checkpoint(tmp_path, capsys):
  assert eval_cli.main(["--reference", "--canonical_loss", "--benchmark=humaneval", f"--out={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "--canonical_loss" in err[0] and "--reference" in err[0], err
  assert not (tmp_path / "o").exists()


def test_misspelled_flag_is_one_line(ckpt, tmp_path, capsys):
  with pytest.raises(SystemExit) as exited:
    eval_cli.main([f"--checkpoint={ckpt}", "--benchmark=humaneval", f"--out={tmp_path}", "--limt=2"])
  assert exited.value.code == 2
  assert capsys.readouterr().err.splitlines() == ["python -m phi1_jax.eval: error: unrecognized arguments: --limt=2"]


def test_missing_checkpoint_and_tokenizer(ckpt, tmp_path, capsys):
  assert eval_cli.main(["--checkpoint=/nonexistent/ckpt", "--benchmark=humaneval", f"--out={tmp_path}"]) == 2
  assert "/nonexistent/ckpt" in capsys.readouterr().err
  bare = tmp_path / "bare"  # a checkpoint without a tokenizer beside it
  bare.mkdir()
  (bare / "params").symlink_to(ckpt / "params")
  (bare / "model_config.json").write_text((ckpt / "model_config.json").read_text())
  assert eval_cli.main([f"--checkpoint={bare}", "--benchmark=humaneval", f"--out={tmp_path / 'o'}"]) == 2
  assert "--tokenizer" in capsys.readouterr().err
  (tmp_path / "used").mkdir()
  (tmp_path / "used" / "summary.json").write_text("{}")
  assert eval_cli.main([f"--checkpoint={ckpt}", "--benchmark=humaneval", f"--out={tmp_path / 'used'}"]) == 2
  assert "already holds summary.json" in capsys.readouterr().err


def test_sample_texts_matches_generate_and_cuts_at_stops(model_and_tokenizer):
  model, tok = model_and_tokenizer
  prompts = ["def add(a, b):\n", "import json\n\nclass Decoder:\n    def decode(self, s):\n", "x = ["]
  texts = sample_texts(model, tok, prompts, batch_size=3, max_new_tokens=12)  # sorted by length inside
  rows = generate(
    model, [tok.encode(p) for p in prompts], max_new_tokens=12, eos_id=tok.eos_id, vocab_limit=tok.vocab_size
  )
  assert texts == [tok.decode(r) for r in rows]  # each prompt's completion, in the callers' order
  stop = texts[1][3:5]  # a string the completion is known to contain
  cut = sample_texts(model, tok, prompts, batch_size=3, max_new_tokens=12, stop_sequences=[stop], check_every=4)
  assert cut[1] == texts[1][: texts[1].find(stop)]


def test_harness_pass_at_1(model_and_tokenizer):
  model, tok = model_and_tokenizer
  got = harness.humaneval_pass_at_1(model, tok, limit=2, max_new_tokens=8, batch_size=2)
  assert got == {"pass@1": 0.0, "n_problems": 2, "n_passed": 0, "n_capped": 0, "n_unfit": 0}


def _prompt_lengths(tok, n=3) -> list[int]:
  problems = load_humaneval()
  return [len(tok.encode(problems[f"HumanEval/{i}"].prompt)) for i in range(n)]


def _short_context(tok, max_new) -> int:
  """A context that leaves HumanEval/0 fewer than max_new tokens, HumanEval/1 none, HumanEval/2 enough."""
  lengths = _prompt_lengths(tok)
  context = lengths[0] + max_new // 3
  assert lengths[1] >= context and lengths[2] + max_new <= context, lengths  # what the tests rely on
  return context


def test_generate_caps_each_row_to_its_own_limit(model_and_tokenizer):
  model, tok = model_and_tokenizer
  prompts = [tok.encode(p) for p in ("def add(a, b):\n", "import json\n", "x = [")]
  full = generate(model, prompts, max_new_tokens=12)
  capped = generate(model, prompts, max_new_tokens=[3, 12, 7])
  assert capped == [full[0][:3], full[1], full[2][:7]]


def test_harness_pass_at_1_caps_to_the_context(model_and_tokenizer):
  model, tok = model_and_tokenizer
  context = _short_context(tok, max_new=24)
  short = model_from_params(
    dataclasses.replace(model.cfg, max_seq_len=context), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  )
  got = harness.humaneval_pass_at_1(short, tok, limit=3, max_new_tokens=24, batch_size=2)
  assert got == {"pass@1": 0.0, "n_problems": 3, "n_passed": 0, "n_capped": 1, "n_unfit": 1}


@pytest.fixture(scope="module")
def short_ckpt(ckpt, model_and_tokenizer, tmp_path_factory) -> tuple[Path, int]:
  """The tiny checkpoint with a context too short for some HumanEval prompts (the same weights)."""
  context = _short_context(model_and_tokenizer[1], max_new=24)
  d = tmp_path_factory.mktemp("short") / "tiny"
  d.mkdir()
  (d / "params").symlink_to(ckpt / "params")
  (d / "tokenizer.model").symlink_to(ckpt / "tokenizer.model")
  config = json.loads((ckpt / "model_config.json").read_text())
  (d / "model_config.json").write_text(json.dumps({**config, "max_seq_len": context}))
  return d, context


def _eval_cmd(ckpt, out, *flags):
  return [
    sys.executable,
    "-m",
    "phi1_jax.eval",
    f"--checkpoint={ckpt}",
    "--benchmark=humaneval",
    f"--out={out}",
    "--workers=2",
    *flags,
  ]


ENV = repo_env(JAX_PLATFORMS="cpu")


@pytest.mark.slow
def test_eval_caps_to_the_context_and_reruns(short_ckpt, tmp_path):
  ckpt, context = short_ckpt
  out = tmp_path / "eval"
  cmd = _eval_cmd(ckpt, out, "--limit=3", "--max_new_tokens=24", "--batch_size=2")
  proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (
    f"1 of 3 prompts left fewer than 24 tokens: max_new_tokens capped; 1 prompt does not fit the "
    f"{context}-token context: scored as failed (HumanEval/1)\n"
  ) in proc.stderr
  summary = json.loads((out / "summary.json").read_text())
  assert summary["n_problems_capped"] == 1 and summary["problems_not_fitting"] == ["HumanEval/1"]
  assert summary["context_len"] == context and summary["n_samples_total"] == 3
  assert summary["n_problems_attempted"] == 3 and summary["pass@1"] == 0.0
  assert summary["results"][f"failed: prompt does not fit the {context}-token context"] == 1
  results = [json.loads(l) for l in (out / "samples.jsonl_results.jsonl").read_text().splitlines()]
  assert [r["task_id"] for r in results] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
  assert results[1]["passed"] is False and "does not fit" in results[1]["result"]
  assert not (out / "samples.partial.jsonl").exists()

  # the same command again: nothing to do, nothing rewritten
  before = {f.name: f.stat().st_mtime_ns for f in out.iterdir()}
  again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.strip().splitlines() == [f"{out} already holds this evaluation (same settings): nothing to do"]
  assert json.loads(again.stdout) == {"pass@1": 0.0}
  assert {f.name: f.stat().st_mtime_ns for f in out.iterdir()} == before
  # other settings into the same folder: refused in one line
  other = subprocess.run(cmd + ["--seed=1"], capture_output=True, text=True, env=ENV, timeout=300)
  assert other.returncode == 2 and "with other settings (seed 0 -> 1)" in other.stderr
  assert len(other.stderr.strip().splitlines()) == 1, other.stderr


@pytest.mark.slow
def test_eval_stops_on_sigint_and_resumes_without_resampling(ckpt, tmp_path):
  out = tmp_path / "eval"
  cmd = _eval_cmd(ckpt, out, "--limit=6", "--max_new_tokens=32", "--batch_size=1", "--check_every=8")
  partial = out / "samples.partial.jsonl"
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
  deadline = time.time() + 300
  while not (partial.exists() and partial.read_text().count("\n") >= 2):  # a batch or two sampled
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
    "stopped by SIGINT: the samples of finished batches are kept in --out; rerun the same command to resume"
  )
  kept = [json.loads(l) for l in partial.read_text().splitlines()]
  assert 2 <= len(kept) < 6 and not (out / "samples.jsonl").exists()
  # mark a kept sample: if the rerun sampled it again, the mark would be gone
  kept[0]["completion"] = "    return 'kept'\n"
  partial.write_text("".join(json.dumps(row) + "\n" for row in kept))

  rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resuming: {len(kept)} of 6 samples kept from {partial}" in rerun.stderr
  samples = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
  assert [s["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(6)]
  assert samples[kept[0]["index"]]["completion"] == "    return 'kept'\n"
  assert not partial.exists() and json.loads((out / "summary.json").read_text())["n_samples_total"] == 6


def test_harness_canonical_loss_is_the_solution_tokens_loss(model_and_tokenizer):
  model, tok = model_and_tokenizer
  loss = harness.humaneval_canonical_loss(model, tok, limit=2, seq_len=640, batch_size=2)
  # by hand: full forward over prompt + solution, mean loss over the solution's tokens
  total, count = 0.0, 0
  for problem in list(load_humaneval().values())[:2]:
    p, s = tok.encode(problem.prompt), tok.encode(problem.canonical_solution)
    assert len(p) + len(s) <= 641  # nothing cut
    toks = jnp.asarray([p + s + [0] * (641 - len(p) - len(s))])  # one shape: one compile; causal
    logp = jax.nn.log_softmax(model(toks)[0, : len(p) + len(s) - 1], axis=-1)
    targets = np.asarray(p + s)[1:]
    nll = -np.asarray(logp)[np.arange(len(targets)), targets]
    total += nll[len(p) - 1 :].sum()
    count += len(s)
  assert loss == pytest.approx(total / count, rel=1e-4)
  assert abs(loss - math.log(CFG.vocab_size)) < 0.5  # a random model is close to uniform


def test_table3_says_how_many_problems_were_evaluated():
  # an eval run with --limit=10 scores HumanEval/0-9 only; HumanEval/0 is similar at tau 0.95 and passed
  task_ids = {"humaneval": [f"HumanEval/{i}" for i in range(164)]}
  results = {f"HumanEval/{i}": float(i == 0) for i in range(10)}
  rows = report_lib.table3(
    task_ids, set(task_ids["humaneval"]), {"HumanEval/0": [0.97, "doc"]}, {"ast_at_tau": {}}, results
  )
  row = next(r for r in rows if r["tau"] == 0.95)
  assert row["evaluated"] == 10 and (row["similar"], row["non_similar"]) == (1, 163)
  assert (row["pass@1_similar"], row["scored_similar"], row["pass@1_non_similar"], row["scored_non_similar"]) == (
    100.0,
    1,
    0.0,
    9,
  )
  zero = {m: 0 for m in METHODS}
  text = report_lib.markdown(
    {
      "counts": {"documents": 1, "kept": 1, "removed": 0, "bad": 0, "flagged_by": zero, "removed_by": zero},
      "flags": {"ngram": 13, "ngram_min_hits": 1, "ast_tau": 0.9, "ast_min_nodes": 8},
      "problems": {},
      "results": "eval/he",
      "table3": rows,
    }
  )
  assert "| humaneval | 0.95 | 1 | 163 | 164 | 0 | 100.0 (1 of 1 evaluated) | 0.0 (9 of 163 evaluated) |" in text
  assert "Results file: eval/he (humaneval: 10 of 164 problems evaluated)." in text
