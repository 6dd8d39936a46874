"""KV-cache sampling against uncached greedy decoding, and the sampling knobs, on tiny random models."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from phi1_jax.model.phi import ModelConfig, Phi
from phi1_jax.inference.sampler import generate, truncate_at

# init_std is large so logits are far apart: float32 near-ties would make argmax flaky
CONFIGS = {
  "partial_rotary": ModelConfig(
    vocab_size=101,
    d_model=32,
    n_layers=2,
    n_heads=4,
    head_dim=8,
    mlp_dim=64,
    rotary_dim=4,
    max_seq_len=256,
    init_std=0.5,
  ),
  "full_rotary": ModelConfig(
    vocab_size=67,
    d_model=48,
    n_layers=3,
    n_heads=3,
    head_dim=16,
    mlp_dim=96,
    rotary_dim=16,
    rope_theta=500.0,
    max_seq_len=256,
    init_std=0.5,
  ),
}
N_NEW = 10


def _uncached_greedy(model, prompts, n):
  """Reference: one full forward pass per new token, argmax of each row's last real position.

  Rows are right-padded to one fixed length so the forward compiles once; causal attention
  means the padding after a row's last token cannot change its logits.
  """
  forward = nnx.jit(lambda m, t: m(t))
  L = max(len(p) for p in prompts) + n
  toks_BxL = np.zeros((len(prompts), L), np.int32)
  lengths = [len(p) for p in prompts]
  for b, p in enumerate(prompts):
    toks_BxL[b, : len(p)] = p
  for _ in range(n):
    logits_BxLxV = np.asarray(forward(model, jnp.asarray(toks_BxL)))
    for b, l in enumerate(lengths):
      toks_BxL[b, l] = logits_BxLxV[b, l - 1].argmax()
    lengths = [l + 1 for l in lengths]
  return [toks_BxL[b, len(p) : len(p) + n].tolist() for b, p in enumerate(prompts)]


def _model_and_prompts(name):
  cfg = CONFIGS[name]
  model = Phi(cfg, rngs=nnx.Rngs(1))
  rng = np.random.RandomState(0)
  # lengths differ (heavy left padding, a one-token prompt, one past the 64-token bucket)
  prompts = [rng.randint(0, cfg.vocab_size, n).tolist() for n in (7, 1, 19, 70)]
  return model, prompts


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_and_prompts(request):
  return _model_and_prompts(request.param)


@pytest.fixture(scope="module")
def small(request):
  """One config for the sampling knobs: each knob combination is a compile."""
  return _model_and_prompts("partial_rotary")


def test_cached_greedy_equals_uncached(model_and_prompts):
  model, prompts = model_and_prompts
  got = generate(model, prompts, max_new_tokens=N_NEW)
  want = _uncached_greedy(model, prompts, N_NEW)
  assert got == want


def test_top_k_1_and_tiny_top_p_equal_greedy(small):
  model, prompts = small
  greedy = generate(model, prompts, max_new_tokens=N_NEW)
  assert generate(model, prompts, max_new_tokens=N_NEW, temperature=1.3, top_k=1, seed=5) == greedy
  assert generate(model, prompts, max_new_tokens=N_NEW, temperature=0.8, top_p=1e-6, seed=7) == greedy


def test_temperature_sampling_reproducible(small):
  model, prompts = small
  kw = dict(max_new_tokens=N_NEW, temperature=1.0, top_p=0.95, top_k=20)  # compiled like the runs above
  a = generate(model, prompts, seed=3, **kw)
  assert a == generate(model, prompts, seed=3, **kw)
  assert a != generate(model, prompts, seed=4, **kw)
  assert all(len(r) == N_NEW for r in a)  # no eos given: every row runs to max_new_tokens


def test_eos_stops_a_row(small):
  model, prompts = small
  greedy = generate(model, prompts, max_new_tokens=N_NEW)
  eos = greedy[0][3]
  got = generate(model, prompts, max_new_tokens=N_NEW, eos_id=eos)
  for g, r in zip(greedy, got):
    want = g[: g.index(eos)] if eos in g else g
    assert r == want


def test_host_stop_fn_stops_rows_early(small):
  model, prompts = small
  greedy = generate(model, prompts, max_new_tokens=N_NEW)
  got = generate(model, prompts, max_new_tokens=N_NEW, stop_fn=lambda toks: len(toks) >= 3, check_every=2)
  for g, r in zip(greedy, got):
    assert 3 <= len(r) <= 4 and r == g[: len(r)]  # stopped within one chunk, same tokens


def test_vocab_limit_is_never_exceeded(small):
  model, prompts = small
  for kw in (dict(), dict(temperature=1.0, top_p=0.95)):  # greedy and sampled
    rows = generate(model, prompts, max_new_tokens=N_NEW, vocab_limit=10, **kw)
    assert all(0 <= t < 10 for r in rows for t in r) and all(len(r) == N_NEW for r in rows)


def test_truncate_at():
  assert truncate_at("  return x\ndef g():\n", ["\ndef", "\nclass"]) == "  return x"
  assert truncate_at("abc", ["\nif"]) == "abc"
  assert truncate_at("a\nclass B\ndef", ["\ndef", "\nclass"]) == "a"


def test_bad_arguments():
  model = Phi(CONFIGS["partial_rotary"], rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="at least one token"):
    generate(model, [[1], []], max_new_tokens=3)
  with pytest.raises(ValueError, match="max_new_tokens"):
    generate(model, [[1]], max_new_tokens=0)


@pytest.mark.slow
def test_sample_command_prints_greedy_completion(tiny_checkpoint):
  """`python -m phi1_jax.sample` prints what generate gives (greedy); --n draws several."""
  from helpers import run_module
  from phi1_jax.model.checkpoint import load_model_and_tokenizer

  model, tok = load_model_and_tokenizer(tiny_checkpoint)
  prompt = "def fib(n):\n"
  want = generate(model, [tok.encode(prompt)], max_new_tokens=12, eos_id=tok.eos_id, vocab_limit=tok.vocab_size)[0]
  r = run_module("phi1_jax.sample", f"--checkpoint={tiny_checkpoint}", f"--prompt={prompt}", "--max_tokens=12")
  assert r.returncode == 0, r.stderr
  assert r.stdout == tok.decode(want) + "\n"
  r = run_module(
    "phi1_jax.sample",
    f"--checkpoint={tiny_checkpoint}",
    "--prompt=-",
    "--max_tokens=12",
    "--temperature=0.8",
    "--n=2",
    "--seed=1",
    input=prompt,
  )
  assert r.returncode == 0 and r.stdout.count("### completion ") == 2, r.stderr


def test_sample_command_bad_input_is_one_line(tiny_checkpoint, tmp_path):
  """Each mistake: one line naming it, exit code 2 (the five run at once)."""
  import shutil
  import subprocess
  import sys

  from helpers import REPO, repo_env

  no_tok = tmp_path / "no_tokenizer"
  shutil.copytree(tiny_checkpoint, no_tok, ignore=shutil.ignore_patterns("tokenizer.model"))
  cases = {
    "not found": [f"--checkpoint={tmp_path / 'nope'}", "--prompt=x"],
    "no tokenizer.model or tokenizer.json": [f"--checkpoint={no_tok}", "--prompt=x"],
    "--top_p=0.0": [f"--checkpoint={tiny_checkpoint}", "--prompt=x", "--top_p=0"],
    "invalid int value": [f"--checkpoint={tiny_checkpoint}", "--prompt=x", "--max_tokens=many"],
    "exceeds the model's context": [f"--checkpoint={tiny_checkpoint}", "--prompt=x", "--max_tokens=100000"],
  }
  env = repo_env()
  procs = {
    named: subprocess.Popen(
      [sys.executable, "-m", "phi1_jax.sample", *args],
      cwd=REPO,
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for named, args in cases.items()
  }
  for named, proc in procs.items():
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1 and named in err, (named, err)
