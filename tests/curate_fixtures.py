"""Fixtures shared by the curation tests: a tiny checkpoint with its tokenizer, a small corpus."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from phi1_jax import convert
from phi1_jax.data.tokenizer import train_tokenizer
from phi1_jax.model import ModelConfig, Phi

STDLIB = Path(os.__file__).resolve().parent
TINY = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64, rotary_dim=4,
                   max_seq_len=256)


def make_checkpoint(d: Path, cfg: ModelConfig = TINY) -> Path:
  """A converter-layout checkpoint of a random tiny Phi with a tokenizer.model beside it."""
  params = nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  convert.save_params(d, cfg, jax.tree.map(np.asarray, params))
  train_tokenizer([STDLIB / "json"], 400, d)
  return d
