"""HumanEval signals for the trainer: greedy pass@1 and the loss on the canonical solutions.

Both are pure functions of (model, tokenizer); the trainer logs what they return. At small
scale pass@1 sits at 0 for a long time; the mean loss of the canonical solutions given their
prompts moves smoothly from the first steps, so it is the one to watch early.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from phi1_jax.inference import sampler as sample
from phi1_jax.eval import plus, problems as problems_lib, scoring


def _humaneval_subset(limit: int | None) -> dict[str, problems_lib.Problem]:
  """The first `limit` HumanEval problems in task order (all 164 for None)."""
  problems = problems_lib.load_humaneval()
  ids = sorted(problems, key=lambda t: int(t.split("/")[-1]))
  if limit is not None:
    if limit < 1:
      raise ValueError(f"limit={limit}: must be >= 1")
    ids = ids[:limit]
  return {t: problems[t] for t in ids}


def context_room(tokenizer, prompts: dict[str, str], max_new_tokens: int, context_len: int) -> dict[str, int]:
  """Per task: the new tokens its prompt leaves room for in the model's context, at most
  max_new_tokens; 0 when the prompt alone fills the context (it cannot be sampled)."""
  encoded = tokenizer.encode_batch(list(prompts.values()))
  return {t: max(0, min(max_new_tokens, context_len - len(e))) for t, e in zip(prompts, encoded)}


def context_note(room: dict[str, int], max_new_tokens: int, context_len: int) -> str | None:
  """One line on the prompts whose max_new_tokens was capped and those that do not fit, or None."""
  capped = [t for t, r in room.items() if 0 < r < max_new_tokens]
  unfit = [t for t, r in room.items() if r == 0]
  parts = []
  if capped:
    parts.append(f"{len(capped)} of {len(room)} prompts left fewer than {max_new_tokens} tokens: max_new_tokens capped")
  if unfit:
    listed = ", ".join(unfit[:8]) + (", ..." if len(unfit) > 8 else "")
    verb = "prompt does" if len(unfit) == 1 else "prompts do"
    parts.append(f"{len(unfit)} {verb} not fit the {context_len}-token context: scored as failed ({listed})")
  return "; ".join(parts) or None


def unfit_result(context_len: int) -> str:
  return f"failed: prompt does not fit the {context_len}-token context"


def score(
  benchmark: str, samples: list[dict], problems: dict, unfit: set[str], context_len: int, *, ks, **execute_kw
) -> tuple[list[dict], dict]:
  """scoring.evaluate_samples for the samples of problems that fit the context; the samples of
  the others (`unfit`) fail without running, and pass@k and the counts include them."""
  rows, summary = scoring.evaluate_samples(
    benchmark, [s for s in samples if s["task_id"] not in unfit], problems, ks=ks, **execute_kw
  )
  if not unfit:
    return rows, summary
  failed = unfit_result(context_len)
  ran = iter(rows)
  rows = [dict(s, result=failed, passed=False) if s["task_id"] in unfit else next(ran) for s in samples]
  n_by_task, c_by_task = collections.Counter(), collections.Counter()
  for row in rows:
    n_by_task[row["task_id"]] += 1
    c_by_task[row["task_id"]] += row["passed"]
  for k in ks:
    summary.pop(f"pass@{k}", None)
    summary.pop(f"base_pass@{k}", None)
    summary.pop(f"raw_pass@{k}", None)
  summary.update(scoring.pass_at_by_task(n_by_task, c_by_task, ks, "pass@"))
  if benchmark in plus.BENCHMARKS:  # an unfit sample fails the base inputs and unsanitized too
    base_by_task = collections.Counter(r["task_id"] for r in rows if plus.passed_base(r["result"]))
    summary.update(scoring.pass_at_by_task(n_by_task, base_by_task, ks, "base_pass@"))
    raw_by_task = collections.Counter(r["task_id"] for r in rows if r.get("raw_passed"))
    summary.update(scoring.pass_at_by_task(n_by_task, raw_by_task, ks, "raw_pass@"))
  summary.update(
    n_samples_total=len(rows),
    n_problems_attempted=len(n_by_task),
    samples_per_problem={"min": min(n_by_task.values()), "max": max(n_by_task.values())},
    results={**summary["results"], failed: sum(s["task_id"] in unfit for s in samples)},
  )
  return rows, summary


def humaneval_pass_at_1(
  model,
  tokenizer,
  *,
  limit: int | None = None,
  max_new_tokens: int = 384,
  batch_size: int = 16,
  timeout_s: float = 3.0,
  sandbox: str = "bwrap",
) -> dict:
  """Greedy pass@1 on HumanEval (or its first `limit` problems): {pass@1, n_problems, n_passed,
  n_capped, n_unfit}. Each problem's max_new_tokens is capped to the room its prompt leaves in
  the model's context; a prompt that alone fills it is scored as failed (n_capped, n_unfit)."""
  problems = _humaneval_subset(limit)
  context_len = model.cfg.max_seq_len
  room = context_room(tokenizer, {t: p.prompt for t, p in problems.items()}, max_new_tokens, context_len)
  ids = [t for t in problems if room[t] > 0]
  completions = sample.sample_texts(
    model,
    tokenizer,
    [problems[t].prompt for t in ids],
    stop_sequences=problems_lib.STOP_SEQUENCES,
    batch_size=max(1, min(batch_size, len(ids))),
    max_new_tokens=[room[t] for t in ids],
    temperature=0.0,
  )
  by_task = {t: problems_lib.truncate_completion(c) for t, c in zip(ids, completions)}
  samples = [{"task_id": t, "completion": by_task.get(t, "")} for t in problems]
  unfit = {t for t in problems if room[t] == 0}
  _, summary = score("humaneval", samples, problems, unfit, context_len, ks=(1,), timeout_s=timeout_s, sandbox=sandbox)
  return {
    "pass@1": summary["pass@1"],
    "n_problems": len(problems),
    "n_passed": summary["n_passed"],
    "n_capped": sum(0 < r < max_new_tokens for r in room.values()),
    "n_unfit": len(unfit),
  }


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _solution_loss_sums(graphdef, params, inputs_BxL, targets_BxL, weights_BxL):
  """(sum of weighted next-token losses, sum of weights) for one batch."""
  model = nnx.merge(graphdef, params)
  logits_BxLxV = model(inputs_BxL)
  logz_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return jnp.sum((logz_BxL - target_logit_BxL) * weights_BxL), jnp.sum(weights_BxL)


def humaneval_canonical_loss(
  model, tokenizer, *, limit: int | None = None, seq_len: int = 1024, batch_size: int = 4
) -> float:
  """Mean per-token loss of the canonical solutions given their prompts (solution tokens only).

  Prompt and solution are tokenized apart and joined, so every solution is scored on the same
  tokens whatever the prompt ends with. A pair longer than seq_len + 1 tokens loses tokens
  from the start of the prompt. Batches have one fixed shape, so this compiles once.
  """
  problems = _humaneval_subset(limit)
  ids = list(problems)
  prompts = tokenizer.encode_batch([problems[t].prompt for t in ids])
  solutions = tokenizer.encode_batch([problems[t].canonical_solution for t in ids])
  n_rows = -(-len(ids) // batch_size) * batch_size
  inputs_NxL = np.zeros((n_rows, seq_len), np.int32)
  targets_NxL = np.zeros((n_rows, seq_len), np.int32)
  weights_NxL = np.zeros((n_rows, seq_len), np.float32)
  for row, (p, s) in enumerate(zip(prompts, solutions)):
    toks = (list(p) + list(s))[-(seq_len + 1) :]
    is_solution = ([False] * len(p) + [True] * len(s))[-(seq_len + 1) :]
    n = len(toks) - 1
    inputs_NxL[row, :n] = toks[:-1]
    targets_NxL[row, :n] = toks[1:]
    weights_NxL[row, :n] = is_solution[1:]  # the loss of predicting each solution token
  graphdef, params = nnx.split(model)
  total, count = 0.0, 0.0
  for start in range(0, n_rows, batch_size):
    sl = slice(start, start + batch_size)
    loss_sum, weight_sum = _solution_loss_sums(
      graphdef, params, jnp.asarray(inputs_NxL[sl]), jnp.asarray(targets_NxL[sl]), jnp.asarray(weights_NxL[sl])
    )
    total += float(loss_sum)
    count += float(weight_sum)
  if count == 0:
    raise ValueError("humaneval_canonical_loss: no solution tokens to score")
  return total / count
