"""What the trainer measures besides the train loss: the held-out loss over each eval split, and
HumanEval pass@1 and canonical-solution loss at their own cadences."""

from __future__ import annotations

import numpy as np
from flax import nnx

from phi1_jax.model import sharding


def eval_losses(eval_step, params, eval_sets, mesh) -> dict:
  """eval_loss; over several sources, their losses weighted as the mixture, each also logged."""
  losses = {}
  for name, _, batches in eval_sets:
    total, count = 0.0, 0
    for batch in batches:
      t, c = eval_step(params, sharding.global_batch(np.asarray(batch["tokens"], np.int32), mesh))
      total, count = total + float(t), count + int(c)
    losses[name] = total / count
  if len(eval_sets) == 1:
    return {"eval_loss": losses[eval_sets[0][0]]}
  weight = sum(w for _, w, _ in eval_sets)
  return {
    "eval_loss": sum(w * losses[name] for name, w, _ in eval_sets) / weight,
    **{f"eval_loss/{name}": loss for name, loss in losses.items()},
  }


def humaneval_due(config, step) -> tuple[bool, bool]:
  """(pass@1 due, canonical loss due) at `step`."""
  return (
    bool(config.humaneval_every) and step % config.humaneval_every == 0,
    bool(config.humaneval_loss_every) and step % config.humaneval_loss_every == 0,
  )


def humaneval_metrics(config, step, graphdef, state, tokenizer_path) -> dict:
  due_pass, due_loss = humaneval_due(config, step)
  if not (due_pass or due_loss):
    return {}
  from phi1_jax.data.tokenizer import load_tokenizer
  from phi1_jax.eval import harness

  model = nnx.merge(graphdef, state["params"])
  tokenizer = load_tokenizer(tokenizer_path)
  limit = config.humaneval_limit or None
  out = {}
  if due_pass:
    scores = harness.humaneval_pass_at_1(model, tokenizer, limit=limit, sandbox=config.humaneval_sandbox)
    out.update({f"humaneval_{k}": v for k, v in scores.items()})
  if due_loss:
    out["humaneval_canonical_loss"] = harness.humaneval_canonical_loss(
      model, tokenizer, limit=limit, seq_len=config.seq_len
    )
  return out
