"""Fixtures shared by the curation tests: a tiny checkpoint with its tokenizer, a small corpus."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from phi1_jax.data.tokenizer import train_tokenizer
from phi1_jax.model import checkpoint
from phi1_jax.model.phi import ModelConfig, Phi
from helpers import STDLIB

TINY = ModelConfig(
  vocab_size=512, d_model=32, n_layers=2, n_heads=4, head_dim=8, mlp_dim=64, rotary_dim=4, max_seq_len=256
)


def make_checkpoint(d: Path, cfg: ModelConfig = TINY) -> Path:
  """A converter-layout checkpoint of a random tiny Phi with a tokenizer.model beside it."""
  params = nnx.to_pure_dict(nnx.state(Phi(cfg, rngs=nnx.Rngs(0)), nnx.Param))
  checkpoint.save_params(d, cfg, jax.tree.map(np.asarray, params))
  train_tokenizer([STDLIB / "json"], 400, d)
  return d


def rule_judge(endpoint: str, body: dict) -> str:
  """A stand-in annotator for demos: the additive 0-5 rubric scored by rules on the code (it
  parses, defines functions, explains itself, is short and self-contained, shows examples).
  Not a judge of educational value: a real run points --base_url at a strong model."""
  import ast
  from llm_servers import prompt_text

  parts = prompt_text(endpoint, body).split("```")
  code = parts[1].strip("\n") if len(parts) > 2 else ""
  lines = code.splitlines() or [""]
  tree = None
  for end in range(len(lines), 0, -5):  # the extract may be cut mid-statement: parse its longest whole prefix
    try:
      tree = ast.parse("\n".join(lines[:end]))
      break
    except SyntaxError:
      continue
  if tree is None:
    return "The extract is not valid code.\nEducational score: 0"
  defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
  documented = [n for n in defs if ast.get_docstring(n)]
  comments = sum(l.strip().startswith("#") for l in lines)
  points = 1 + bool(defs) + (len(documented) >= max(1, len(defs) // 2) or comments / len(lines) > 0.1)
  points += len(lines) < 300 and "__main__" in code
  points += ">>>" in code or "Example" in code
  return f"Points by the rubric: {points}.\nEducational score: {points}"


if __name__ == "__main__":  # serve rule_judge on 127.0.0.1 for the README's curation demo
  import argparse
  import sys

  sys.path.insert(0, str(Path(__file__).parent))
  from llm_servers import FaultyLLMServer

  ap = argparse.ArgumentParser(description="the rule-based stand-in annotator on an OpenAI-compatible endpoint")
  ap.add_argument("--port", type=int, default=8123)
  server = FaultyLLMServer(responder=rule_judge, port=ap.parse_args().port)
  print(f"serving {server.base_url}", flush=True)
  server.httpd.serve_forever()
