"""What a recipe will cost before it runs (`recipe run --dry_run`): LLM requests and tokens, training
tokens and accelerator-hours, per step and in total.

LLM use is an upper bound: every request is counted with its full prompt and its whole completion
budget (`--max_tokens`), and synthesis asks for as many answers as the measured yield says it needs
for `--n` kept documents. Training tokens are exact (total_steps x batch_size x seq_len of the
step's config with its overrides); GPU-hours divide them by a throughput MEASURED on one H200
(`THROUGHPUT`), scaled by FLOPs per token for a model shape that was not measured.
"""

from __future__ import annotations

import dataclasses
import math

from phi1_jax.recipe.steps import Output, Raw, Step

CHARS_PER_TOKEN = 4  # a rough average for English and code under BPE tokenizers (GPT-2's, the paper's)
DEVICE = "H200"


@dataclasses.dataclass(frozen=True)
class Measured:
  name: str  # the config the row was measured with
  d_model: int
  n_layers: int
  attn_dropout: float
  tokens_per_s: float  # per device


# benchmarks/RESULTS.md, "Training throughput and MFU (GPU)", 2026-11-26: one NVIDIA H200, bf16, seq_len 2048,
# the trainer's own jitted step; the best measured setting of each (config, attention dropout).
MEASURED_SEQ_LEN = 2048
THROUGHPUT = (
  Measured("phi1_small", 1024, 20, 0.0, 142_536),
  Measured("phi1_small", 1024, 20, 0.1, 40_346),
  Measured("phi1", 2048, 24, 0.0, 49_450),
  Measured("phi1", 2048, 24, 0.1, 15_676),
)

# The stages' own defaults for a flag a step does not give (phi1_jax/curate/__main__.py,
# phi1_jax/synth/__main__.py; tests/test_recipe_cost.py checks them against the parsers).
STAGE_DEFAULTS = {
  "curate annotate": {"max_chars": 4000, "max_new_tokens": 400, "scoring": "additive"},
  "synth textbooks": {"max_tokens": 2048, "seed": 0},
  "synth exercises": {"max_tokens": 1024, "seed": 0},
}
# Answers asked per document kept, measured by docs/chain.md's run (the stand-in LLM, 20% faults):
# 286 answers for 200 textbooks, 158 for 100 exercises (the rest: code that does not parse, near
# duplicates, refusals, failed tests). A real LLM's yield differs; synth stops at 4 x n + 16 prompts.
SYNTH_YIELD = {"synth textbooks": (200, 286), "synth exercises": (100, 158)}
PROMPTS_SAMPLED = 64  # synth prompts whose length is averaged


def _path(value) -> str | None:
  """A flag value's path when it is known before the run (a Raw input or a plain string)."""
  if isinstance(value, Raw):
    return value.path
  if isinstance(value, str):
    return value
  return None


def _flag(step: Step, name: str):
  return step.args.get(name, STAGE_DEFAULTS.get(step.command, {}).get(name))


def _tokens(chars: float) -> int:
  return math.ceil(chars / CHARS_PER_TOKEN)


def _capped(step: Step, requests: int, per_request: int) -> tuple[int, int]:
  """(requests, tokens) under the step's own caps (--max_requests, --max_tokens_total)."""
  if step.args.get("max_requests"):
    requests = min(requests, int(step.args["max_requests"]))
  tokens = requests * per_request
  if step.args.get("max_tokens_total"):
    tokens = min(tokens, int(step.args["max_tokens_total"]))
  return requests, tokens


def annotate_cost(step: Step) -> dict:
  from phi1_jax.curate import annotate

  logprob = _flag(step, "scoring") == "logprob"
  prompt_path = _path(step.args.get("prompt"))
  # the template annotate itself picks
  template = (
    annotate.load_prompt(prompt_path)
    if prompt_path
    else (annotate.LOGPROB_PROMPT if logprob else annotate.DEFAULT_PROMPT)
  )
  prompt = _tokens(len(template) - len(annotate.PLACEHOLDER) + int(_flag(step, "max_chars")))
  completion = 1 if logprob else int(_flag(step, "max_new_tokens"))
  how = f"{prompt} prompt tokens (template + --max_chars/{CHARS_PER_TOKEN}) + {completion} completion each"
  if step.args.get("sample") is None:
    return {"llm_requests": None, "llm_tokens": None, "llm_note": f"every document of --input x ({how})"}
  requests, tokens = _capped(step, int(step.args["sample"]), prompt + completion)
  return {"llm_requests": requests, "llm_tokens": tokens, "llm_note": f"--sample={step.args['sample']} x ({how})"}


def mean_synth_prompt_chars(step: Step) -> float:
  """The average length of the step's first prompts, built by the stage's own prompt sampler."""
  from phi1_jax.synth import prompts

  kind = step.command.split()[1]
  topics_path = _path(step.args.get("topics"))
  topics = prompts.load_topics(topics_path) if topics_path else prompts.load_topics()
  template_path = _path(step.args.get("template"))
  template = prompts.load_template(template_path, kind) if template_path else None
  seed, parts = int(_flag(step, "seed")), prompts.load_parts()
  count = min(int(step.args["n"]), PROMPTS_SAMPLED)
  built = [prompts.PROMPTERS[kind](seed, i, topics, parts, template)["prompt"] for i in range(count)]
  return sum(len(p) for p in built) / count


def synth_cost(step: Step) -> dict:
  n = int(step.args["n"])
  kept, answers = SYNTH_YIELD[step.command]
  max_prompts = int(step.args.get("max_prompts") or 4 * n + 16)
  wanted = min(math.ceil(n * answers / kept), max_prompts)
  prompt = _tokens(mean_synth_prompt_chars(step))
  completion = int(_flag(step, "max_tokens"))
  requests, tokens = _capped(step, wanted, prompt + completion)
  note = (
    f"--n={n} / yield {kept}/{answers} (docs/chain.md) x ({prompt} prompt tokens, mean of the first prompts, "
    f"+ --max_tokens={completion})"
  )
  return {"llm_requests": requests, "llm_tokens": tokens, "llm_note": note}


# ----------------------------------------------------------------------------- training


def train_config(step: Step, by_name: dict[str, Step]):
  """The step's config with its "config.*" overrides; a finetuning config's unset architecture and
  seq_len come from the train step its init_from names (as the trainer takes them from the checkpoint)."""
  from phi1_jax.model.config import ARCHITECTURE_FIELDS
  from phi1_jax.sweep.spec import load_config

  path = _path(step.args.get("config"))
  if path is None:
    return None
  overrides = [
    (key.removeprefix("config."), str(value))
    for key, value in step.args.items()
    if key.startswith("config.") and isinstance(value, str | int | float | bool)
  ]
  config = load_config(path, overrides)
  init_from = step.args.get("config.init_from")
  parent = by_name.get(init_from.step) if isinstance(init_from, Output) else None
  if parent is not None and parent.command == "train":
    parent_config = train_config(parent, by_name)
    if parent_config is not None:
      for name in ARCHITECTURE_FIELDS:
        if config.model[name] is None:
          config.model[name] = parent_config.model[name]
      if config.seq_len is None:
        config.seq_len = parent_config.seq_len
  return config


def throughput(model, seq_len: int) -> tuple[float, str, bool]:
  """(tokens/s per device, where it comes from, scaled?) for a ModelConfig at seq_len: the measured row
  of its shape and attention dropout, else the nearest row by FLOPs per token, scaled by the FLOPs ratio."""
  from phi1_jax.model.config import PHI1, PHI1_SMALL
  from phi1_jax.train.flops import flops_per_token

  dropout = 0.1 if model.attn_dropout > 0 else 0.0
  rows = [r for r in THROUGHPUT if r.attn_dropout == dropout]
  label = f"attention dropout {dropout:g}"
  for r in rows:
    if (r.d_model, r.n_layers) == (model.d_model, model.n_layers) and seq_len == MEASURED_SEQ_LEN:
      return r.tokens_per_s, f"measured: {r.name}, {label}, {DEVICE}", False
  shapes = {"phi1_small": PHI1_SMALL, "phi1": PHI1}
  flops = flops_per_token(model, seq_len)
  row_flops = {r.name: flops_per_token(shapes[r.name], MEASURED_SEQ_LEN) for r in rows}
  nearest = min(rows, key=lambda r: abs(math.log(row_flops[r.name] / flops)))
  tokens_per_s = nearest.tokens_per_s * row_flops[nearest.name] / flops
  where = (
    f"scaled by FLOPs per token ({flops:.3g} vs {row_flops[nearest.name]:.3g}) from {nearest.name}, {label}, "
    f"{DEVICE}: optimistic for small models, which reach a lower MFU"
  )
  return tokens_per_s, where, True


def train_cost(step: Step, by_name: dict[str, Step]) -> dict:
  from phi1_jax.model.config import ModelConfig

  config = train_config(step, by_name)
  if config is None:
    return {"train_tokens": None, "gpu_hours": None, "train_note": "no --config file: not estimated"}
  steps = config.total_steps
  if 0 < config.run_until_step < steps:
    steps = config.run_until_step
  if config.seq_len is None or config.model.d_model is None:
    note = "architecture and seq_len from an init_from outside the recipe: not estimated"
    return {"train_tokens": None, "gpu_hours": None, "train_note": note}
  tokens = steps * config.batch_size * config.seq_len
  tokens_per_s, where, scaled = throughput(ModelConfig.from_dict(config.model), config.seq_len)
  note = f"{steps:,} steps x {config.batch_size:,} x {config.seq_len:,} tokens; {tokens_per_s:,.0f} tok/s ({where})"
  return {
    "train_tokens": tokens,
    "gpu_hours": tokens / tokens_per_s / 3600,
    "tokens_per_s": tokens_per_s,
    "scaled": scaled,
    "train_note": note,
  }


# ----------------------------------------------------------------------------- the whole recipe


def estimate(steps: list[Step]) -> dict:
  """Per step: llm_requests, llm_tokens (upper bounds), train_tokens, gpu_hours, with notes saying how;
  totals over the steps with a number, and how many steps have none."""
  by_name = {s.name: s for s in steps}
  rows = []
  for step in steps:
    row = {"name": step.name, "command": step.command}
    if step.command == "curate annotate":
      row.update(annotate_cost(step))
    elif step.command in SYNTH_YIELD:
      row.update(synth_cost(step))
    elif step.command == "train":
      row.update(train_cost(step, by_name))
    rows.append(row)
  total = {}
  for key, applies in (("llm_requests", "llm_note"), ("llm_tokens", "llm_note"), ("train_tokens", "train_note")):
    total[key] = sum(r[key] for r in rows if r.get(key) is not None)
    total[key + "_unknown"] = sum(1 for r in rows if applies in r and r.get(key) is None)
  total["gpu_hours"] = sum(r["gpu_hours"] for r in rows if r.get("gpu_hours") is not None)
  total["scaled"] = any(r.get("scaled") for r in rows)
  return {"steps": rows, "total": total, "device": DEVICE}


def _hours(hours: float) -> str:
  return f"{hours:,.2f}" if hours >= 1 else f"{hours:.2g}"


def lines(est: dict) -> list[str]:
  """The estimate as lines to print."""
  out = [f"Cost estimate (LLM use: upper bounds; GPU-hours: one {DEVICE}, benchmarks/RESULTS.md):"]
  for r in est["steps"]:
    if "llm_note" in r:
      requests, tokens = r["llm_requests"], r["llm_tokens"]
      if requests is None:
        out.append(f"  {r['name']}: LLM requests unknown before the run: {r['llm_note']}")
      else:
        out.append(f"  {r['name']}: <= {requests:,} LLM requests, <= {tokens:,} tokens: {r['llm_note']}")
    if "train_note" in r:
      if r["train_tokens"] is None:
        out.append(f"  {r['name']}: {r['train_note']}")
      else:
        hours = _hours(r["gpu_hours"])
        out.append(f"  {r['name']}: {r['train_tokens']:,} training tokens, {hours} GPU-hours: {r['train_note']}")
  t = est["total"]

  def unknown(key):
    return f" (+ {t[key + '_unknown']} step(s) not estimated)" if t[key + "_unknown"] else ""

  out.append(
    f"Total: <= {t['llm_requests']:,} LLM requests{unknown('llm_requests')}, <= {t['llm_tokens']:,} LLM tokens; "
    f"{t['train_tokens']:,} training tokens{unknown('train_tokens')}, {_hours(t['gpu_hours'])} GPU-hours ({DEVICE})"
    + (", some scaled from a measured model" if t["scaled"] else "")
  )
  return out
