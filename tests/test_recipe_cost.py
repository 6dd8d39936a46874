"""A recipe's cost estimate: training tokens and H200-hours from the real config files, LLM use from
the stages' own prompts and defaults."""

import importlib.util
import math

from helpers import REPO
from phi1_jax.curate import annotate
from phi1_jax.recipe import cost
from phi1_jax.recipe.steps import Output, Raw, Step


def _config(name: str) -> Raw:
  return Raw(str(REPO / "configs" / name))


def test_phi1_pretraining_tokens_and_hours():
  est = cost.estimate([Step("pretrain", "train", {"config": _config("phi1.py")})])
  row = est["steps"][0]
  tokens = 36_000 * 1024 * 2048
  assert row["train_tokens"] == tokens == 75_497_472_000
  assert row["gpu_hours"] == tokens / 15_676 / 3600  # phi-1 at attention dropout 0.1 (the paper's)
  assert not row["scaled"] and "measured: phi1, attention dropout 0.1" in row["train_note"]
  assert est["total"]["train_tokens"] == tokens and est["total"]["gpu_hours"] == row["gpu_hours"]
  text = "\n".join(cost.lines(est))
  assert "75,497,472,000 training tokens" in text and f"{tokens / 15_676 / 3600:,.2f} GPU-hours" in text


def test_overrides_and_finetuning_from_a_recipe_step():
  pretrain = Step(
    "pretrain",
    "train",
    {"config": _config("phi1_small.py"), "config.total_steps": 100, "config.model.attn_dropout": 0.0},
  )
  finetune = Step(
    "finetune",
    "train",
    {"config": _config("phi1_finetune.py"), "config.init_from": Output("pretrain"), "config.total_steps": 10},
  )
  small, ft = cost.estimate([pretrain, finetune])["steps"]
  assert small["train_tokens"] == 100 * 1024 * 2048
  assert small["gpu_hours"] == small["train_tokens"] / 142_536 / 3600
  # the finetuning config leaves the architecture and seq_len to its init_from: phi-1-small's, at its dropout 0.1
  assert ft["train_tokens"] == 10 * 256 * 2048
  assert ft["gpu_hours"] == ft["train_tokens"] / 40_346 / 3600 and not ft["scaled"]


def test_unknown_model_shape_is_scaled():
  est = cost.estimate([Step("tiny", "train", {"config": _config("tiny.py")})])
  row = est["steps"][0]
  assert row["train_tokens"] == 300 * 16 * 128
  assert row["scaled"] and "scaled by FLOPs per token" in row["train_note"]
  assert "scaled" in "\n".join(cost.lines(est))
  # more throughput than phi-1-small (fewer FLOPs per token), so fewer hours per token
  assert row["tokens_per_s"] > 142_536


def test_synth_requests_scale_with_n():
  small, large, capped = cost.estimate(
    [
      Step("tb100", "synth textbooks", {"n": 100}),
      Step("tb1000", "synth textbooks", {"n": 1000}),
      Step("ex", "synth exercises", {"n": 1000, "max_requests": 500, "max_tokens": 256}),
    ]
  )["steps"]
  assert small["llm_requests"] == math.ceil(100 * 286 / 200) == 143
  assert large["llm_requests"] == 1430 and large["llm_tokens"] == 10 * small["llm_tokens"]
  per_request = small["llm_tokens"] / small["llm_requests"]
  assert 2048 + 50 < per_request < 2048 + 200  # the default --max_tokens plus a prompt of a few hundred chars
  assert capped["llm_requests"] == 500 and capped["llm_tokens"] < 500 * (256 + 200)
  assert "yield 200/286 (docs/chain.md)" in small["llm_note"]


def test_annotate_requests_and_tokens():
  sampled, everything = cost.estimate(
    [
      Step("ann", "curate annotate", {"input": Raw("/data/code"), "sample": 60}),
      Step("ann_all", "curate annotate", {"input": Raw("/data/code"), "scoring": "logprob"}),
    ]
  )["steps"]
  prompt = math.ceil((len(annotate.DEFAULT_PROMPT) - len(annotate.PLACEHOLDER) + 4000) / 4)
  assert sampled["llm_requests"] == 60 and sampled["llm_tokens"] == 60 * (prompt + 400)
  assert everything["llm_requests"] is None
  est = cost.estimate([Step("ann_all", "curate annotate", {"input": Raw("/data/code")})])
  text = "\n".join(cost.lines(est))
  assert "LLM requests unknown before the run" in text and "(+ 1 step(s) not estimated)" in text


def _reference():
  spec = importlib.util.spec_from_file_location("gen_reference", REPO / "docs" / "gen_reference.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_stage_defaults_are_the_stages_own():
  reference = _reference()
  for command, defaults in cost.STAGE_DEFAULTS.items():
    module, sub = command.split()
    _, parser = reference.command_help(f"phi1_jax.{module}", [sub])
    assert parser is not None, command
    for flag, value in defaults.items():
      assert parser.get_default(flag) == value, (command, flag)
