"""The paper's Figure 2.1 experiment as a recipe: one model at equal tokens on raw, filtered, and
filtered + synthetic-textbook code, each finetuned on synthetic exercises, evaluated per seed.

configs/recipes/*.py set the knobs (`knobs()` holds them all, with what each means) and call
`build(config)`. The steps, in data-flow order:

    tokenizer (unless one is given) ─ decontam/raw ─ pack/raw ─ embedder (unless one is given)
    annotate (LLM) + embed ─ classifier ─ filter ─ decontam/filtered ─ pack/filtered
    textbooks (LLM) ─ decontam/textbooks ─ pack/textbooks;  exercises (LLM) ─ decontam/exercises ─ pack/exercises
    per variant and seed: pretrain ─ eval/base;  pretrain ─ finetune (exercises) ─ eval/finetuned
    per variant: table3 (decontam --results of seed 0's finetuned eval: the paper's Table 3)

Every source is decontaminated against the benchmarks on its own (adding a source reruns nothing
else); every variant trains the same model for the same steps on the same number of tokens.
"""

from __future__ import annotations

import ml_collections

from phi1_jax.recipe.steps import Mixture, Output, Raw, Recipe, Service, ServiceURL, Step

VARIANTS = {
  "raw": "the unfiltered corpus (the paper's The Stack+)",
  "filtered": "the corpus kept by the classifier",
  "filtered+textbooks": "filtered code and synthetic textbooks (the paper's CodeTextbook)",
}

# Stand-in endpoints for offline runs (tests/ holds them; the report names them as stand-ins).
STAND_INS = [
  Service(
    "annotator",
    ("{python}", "tests/curate_fixtures.py", "--port", "{port}"),
    "a rule-based annotator (does the code parse, define functions, explain itself), not an LLM",
  ),
  Service(
    "textbook_llm",
    ("{python}", "tests/llm_servers.py", "--port", "{port}", "--responder", "textbook", "--fault_rate", "0.2"),
    "scripted textbook text from a server that fails 20% of requests, not an LLM",
  ),
  Service(
    "exercise_llm",
    ("{python}", "tests/llm_servers.py", "--port", "{port}", "--responder", "exercise", "--fault_rate", "0.2"),
    "scripted exercises from a server that fails 20% of requests, not an LLM",
  ),
]


def knobs() -> ml_collections.ConfigDict:
  """Every knob of the experiment, with the paper-scale defaults where the paper gives them."""
  c = ml_collections.ConfigDict()
  c.name = "phi1"
  c.raw_inputs = ""  # comma-separated files or folders (.py, JSONL, parquet) of the raw corpus
  c.raw_version = ""  # a declared version of the raw corpus (instead of its files' sizes and times)
  c.text_key = "text"  # The Stack's parquet: content
  c.id_key = "id"  # The Stack's parquet: hexsha
  c.stand_ins = False  # True: start the offline stand-in endpoints (a wiring test, never a result)
  c.expected = ""
  c.wiring_test = False
  c.seeds = "0,1,2"
  c.llm = ml_collections.ConfigDict(dict(base_url="", model="", concurrency=16))  # annotation and synthesis
  c.annotate = ml_collections.ConfigDict(dict(sample=100_000, max_chars=6000, max_new_tokens=256))
  c.embed = ml_collections.ConfigDict(dict(checkpoint="", max_len=1024, embedder_steps=100))
  c.filter = ml_collections.ConfigDict(dict(tasks=64, workers=8))
  c.textbooks = ml_collections.ConfigDict(dict(n=1_000_000, max_tokens=1024))
  c.exercises = ml_collections.ConfigDict(dict(n=800_000, max_tokens=512))
  c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=32_000))  # path: a trained tokenizer to use
  c.decontam = ml_collections.ConfigDict(dict(benchmarks="humaneval", mbpp_path="", tasks=64, workers=8))
  c.pack = ml_collections.ConfigDict(dict(seq_len=2048, eval_fraction=0.01))
  # pretraining: the same config, steps and tokens for every variant; overrides "key=value,key=value"
  c.pretrain = ml_collections.ConfigDict(
    dict(config="configs/phi1.py", total_steps=36_000, batch_size=1024, overrides="", textbook_weight=0.13)
  )
  # the data stages' executor flags for filter and decontam, "key=value,...", e.g.
  # "executor=slurm,slurm_partition=cpu,slurm_wait=true" (slurm_wait: the step ends when its jobs do)
  c.data_executor = ""
  c.launcher = "local"  # train steps: local, or slurm (through launch/slurm.sbatch; `run --sbatch_args`)
  c.finetune = ml_collections.ConfigDict(
    dict(config="configs/phi1_finetune.py", total_steps=6_000, batch_size=256, overrides="")
  )
  c.eval = ml_collections.ConfigDict(dict(n_samples=1, temperature=0.0, max_new_tokens=384, limit=0, mbpp_path=""))
  return c


def paper_scale_knobs(name: str, pretrain_config: str) -> ml_collections.ConfigDict:
  """The knobs of the paper-scale recipes: The Stack's Python parquet and StackOverflow (same columns),
  the paper's expected direction, a pretraining config of the paper's steps and tokens."""
  c = knobs()
  c.name = name
  c.raw_inputs = "data/the-stack-dedup/data/python,data/stackoverflow-python"
  c.text_key, c.id_key = "content", "hexsha"
  c.expected = (
    "The paper's direction: at equal tokens, HumanEval pass@1 raw < filtered < filtered+textbooks before "
    "finetuning (Section 2.1: 12.19% unfiltered vs 17.68% filtered at 350M; phi-1-base 29%), and every variant "
    "higher after finetuning on exercises (phi-1 50.6%). Canonical-solution loss in the opposite order."
  )
  c.pretrain.config = pretrain_config
  c.embed.embedder_steps = 2000
  return c


def _pairs(text: str, knob: str) -> dict[str, str]:
  """A knob's "key=value,key=value" as a dict."""
  pairs = [p for p in text.split(",") if p.strip()]
  if any("=" not in p for p in pairs):
    raise ValueError(f"{knob} {text!r}: want key=value,key=value")
  return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in pairs)}


def _overrides(text: str, knob: str) -> dict[str, str]:
  """Trainer config overrides as train-step flags (config.KEY)."""
  return {f"config.{k}": v for k, v in _pairs(text, knob).items()}


def _flags(text: str, knob: str) -> dict[str, str | bool]:
  """Stage flags; true / false are on/off flags."""
  return {k: {"true": True, "false": False}.get(v.lower(), v) for k, v in _pairs(text, knob).items()}


def build(c: ml_collections.ConfigDict) -> Recipe:
  seeds = [int(s) for s in str(c.seeds).split(",") if s.strip()]
  if not seeds:
    raise ValueError("seeds: give at least one, e.g. 0,1,2")
  raw = [Raw(p.strip(), c.raw_version) for p in c.raw_inputs.split(",") if p.strip()]
  if not raw:
    raise ValueError("raw_inputs: give the raw corpus (files or folders, comma-separated)")
  keys = {"text_key": c.text_key, "id_key": c.id_key}
  missing = []
  if c.stand_ins:
    services = STAND_INS
    annotator, textbook_llm, exercise_llm = (ServiceURL(s.name) for s in STAND_INS)
    annotator_model = llm_model = "stand-in"
  else:
    services = []
    annotator = textbook_llm = exercise_llm = c.llm.base_url or "SET-llm.base_url"
    annotator_model = llm_model = c.llm.model or "SET-llm.model"
    missing += [f"llm.{k}" for k in ("base_url", "model") if not c.llm[k]]
  llm = {"concurrency": c.llm.concurrency}
  executor = _flags(c.data_executor, "data_executor")
  benchmarks = {"benchmarks": c.decontam.benchmarks, "tasks": c.decontam.tasks, "workers": c.decontam.workers}
  benchmarks.update(executor)
  if c.decontam.mbpp_path:
    benchmarks["mbpp_path"] = Raw(c.decontam.mbpp_path)
  steps: list[Step] = []

  def add(name, command, args, **info):
    launcher = c.launcher if command == "train" else "local"
    steps.append(Step(name, command, args, info=info, launcher=launcher))

  if c.tokenizer.path:
    tokenizer = Raw(c.tokenizer.path)
  else:
    add(
      "tokenizer", "data.tokenizer train", {"input": raw, "text_key": c.text_key, "vocab_size": c.tokenizer.vocab_size}
    )
    tokenizer = Output("tokenizer", "tokenizer.model")

  def clean_and_pack(source: str, inputs, eval_fraction: float, input_keys: dict | None = None):
    add(f"decontam/{source}", "decontam", {"input": inputs, **(input_keys or {}), **benchmarks}, source=source)
    pack = {"input": Output(f"decontam/{source}", "clean"), "tokenizer": tokenizer, "seq_len": c.pack.seq_len}
    add(f"pack/{source}", "data.pack", {**pack, "eval_fraction": eval_fraction}, source=source)

  clean_and_pack("raw", raw, c.pack.eval_fraction, keys)
  if c.embed.checkpoint:
    embedder = Raw(c.embed.checkpoint)
  else:  # a model trained on the raw corpus embeds it (the paper used a pretrained code model)
    add(
      "embedder",
      "train",
      {
        "config": Raw(c.pretrain.config),
        "config.total_steps": c.embed.embedder_steps,
        "config.batch_size": c.pretrain.batch_size,
        "config.data.mixture": Mixture(((Output("pack/raw"), 1.0),), ("raw",)),
        **_overrides(c.pretrain.overrides, "pretrain.overrides"),
      },
    )
    embedder = Output("embedder")
  sample = {"input": raw, **keys, "sample": c.annotate.sample}
  add(
    "annotate",
    "curate annotate",
    {
      **sample,
      "base_url": annotator,
      "model": annotator_model,
      "max_chars": c.annotate.max_chars,
      "max_new_tokens": c.annotate.max_new_tokens,
      **llm,
    },
  )
  add("embed", "curate embed", {**sample, "checkpoint": embedder, "max_len": c.embed.max_len})
  add("classifier", "curate train-classifier", {"annotations": Output("annotate"), "embeddings": Output("embed")})
  add(
    "filter",
    "curate filter",
    {
      "input": raw,
      **keys,
      "classifier": Output("classifier"),
      "tasks": c.filter.tasks,
      "workers": c.filter.workers,
      **executor,
    },
  )
  clean_and_pack("filtered", [Output("filter", "data")], c.pack.eval_fraction)
  for kind, endpoint in (("textbooks", textbook_llm), ("exercises", exercise_llm)):
    knob = c[kind]
    args = {"n": knob.n, "base_url": endpoint, "model": llm_model, "max_tokens": knob.max_tokens, **llm}
    add(kind, f"synth {kind}", args)
  clean_and_pack("textbooks", [Output("textbooks")], c.pack.eval_fraction)
  # finetuning data is small: hold out enough for one eval batch (docs/chain.md)
  clean_and_pack("exercises", [Output("exercises")], max(c.pack.eval_fraction, 0.2))

  w = c.pretrain.textbook_weight
  mixtures = {
    "raw": Mixture(((Output("pack/raw"), 1.0),), ("raw",)),
    "filtered": Mixture(((Output("pack/filtered"), 1.0),), ("filtered",)),
    "filtered+textbooks": Mixture(
      ((Output("pack/filtered"), round(1 - w, 6)), (Output("pack/textbooks"), w)), ("filtered", "textbooks")
    ),
  }
  evaluation = {
    "benchmark": "humaneval",
    "n_samples": c.eval.n_samples,
    "temperature": c.eval.temperature,
    "max_new_tokens": c.eval.max_new_tokens,
    "canonical_loss": True,
    **({"limit": c.eval.limit} if c.eval.limit else {}),
  }
  for variant, mixture in mixtures.items():
    for seed in seeds:
      at = f"{variant}/seed{seed}"
      pretrain = {
        "config": Raw(c.pretrain.config),
        "config.seed": seed,
        "config.total_steps": c.pretrain.total_steps,
        "config.batch_size": c.pretrain.batch_size,
        "config.data.mixture": mixture,
        **_overrides(c.pretrain.overrides, "pretrain.overrides"),
      }
      add(f"pretrain/{at}", "train", pretrain, variant=variant, seed=seed, role="pretrain")
      finetune = {
        "config": Raw(c.finetune.config),
        "config.seed": seed,
        "config.init_from": Output(f"pretrain/{at}"),
        "config.total_steps": c.finetune.total_steps,
        "config.batch_size": c.finetune.batch_size,
        "config.data.mixture": Mixture(((Output("pack/exercises"), 1.0),), ("exercises",)),
        **_overrides(c.finetune.overrides, "finetune.overrides"),
      }
      add(f"finetune/{at}", "train", finetune, variant=variant, seed=seed, role="finetune")
      for stage, model in (("base", f"pretrain/{at}"), ("finetuned", f"finetune/{at}")):
        args = {"checkpoint": Output(model), **evaluation}
        add(f"eval/{at}/{stage}", "eval", args, variant=variant, seed=seed, role=f"eval {stage}")
        if c.eval.mbpp_path:
          args = {"checkpoint": Output(model), **evaluation, "benchmark": "mbpp", "mbpp_path": Raw(c.eval.mbpp_path)}
          args.pop("canonical_loss")
          add(f"mbpp/{at}/{stage}", "eval", args, variant=variant, seed=seed, role=f"mbpp {stage}")
    # Table 3 on what the finetuned model was trained on: every source as decontam kept it (one JSONL layout)
    sources = [Output(f"decontam/{name}", "clean") for name in (*mixture.names, "exercises")]
    table3 = {"input": sources, **benchmarks, "results": Output(f"eval/{variant}/seed{seeds[0]}/finetuned")}
    add(f"table3/{variant}", "decontam", table3, variant=variant, seed=seeds[0], role="table3")

  return Recipe(
    name=c.name,
    steps=steps,
    services=services,
    variants=dict(VARIANTS),
    expected=c.expected,
    wiring_test=c.wiring_test,
    missing=missing,
  )
