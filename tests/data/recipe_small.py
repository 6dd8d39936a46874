"""A recipe for the tests: tokenizer, decontam, pack, a short training run and a HumanEval eval on a
few standard-library packages (about a minute on 2 CPU cores)."""

import os

import ml_collections

from phi1_jax.recipe.steps import Mixture, Output, Raw, Recipe, Step

STDLIB = os.path.dirname(os.__file__)


def get_config():
  c = ml_collections.ConfigDict()
  c.packages = "json,email"
  c.train_steps = 30
  c.eval_benchmark = "humaneval"
  c.eval_limit = 4
  c.launcher = "local"  # the train step's: "slurm" runs it through launch/slurm.sbatch
  return c


def get_recipe(c):
  raw = [Raw(os.path.join(STDLIB, p)) for p in c.packages.split(",")]
  model = {
    "config.model.d_model": 64,
    "config.model.n_layers": 2,
    "config.model.n_heads": 2,
    "config.model.mlp_dim": 128,
  }
  steps = [
    Step("tokenizer", "data.tokenizer train", {"input": raw, "vocab_size": 512}),
    Step("decontam/raw", "decontam", {"input": raw, "benchmarks": "humaneval", "tasks": 1, "workers": 1}),
    Step(
      "pack/raw",
      "data.pack",
      {
        "input": Output("decontam/raw", "clean"),
        "tokenizer": Output("tokenizer", "tokenizer.model"),
        "seq_len": 128,
        "eval_fraction": 0.2,
      },
    ),
    Step(
      "pretrain/raw/seed0",
      "train",
      {
        "config": Raw("configs/tiny.py"),
        "config.total_steps": c.train_steps,
        "config.batch_size": 8,
        "config.model.vocab_size": 512,
        **model,
        "config.data.mixture": Mixture(((Output("pack/raw"), 1.0),), ("raw",)),
        "config.log_every": 1,
        "config.eval_every": 10,
        "config.eval_batches": 2,
        "config.checkpoint_every": 5,
      },
      info={"variant": "raw", "seed": 0, "role": "pretrain"},
      launcher=c.launcher,
    ),
    Step(
      "eval/raw/seed0/base",
      "eval",
      {
        "checkpoint": Output("pretrain/raw/seed0"),
        "benchmark": c.eval_benchmark,
        "limit": c.eval_limit,
        "max_new_tokens": 16,
        "canonical_loss": True,
      },
      info={"variant": "raw", "seed": 0, "role": "eval base"},
    ),
  ]
  return Recipe(name="small", steps=steps, variants={"raw": "two standard-library packages"}, wiring_test=True)
