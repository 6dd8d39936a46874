"""The paper's Figure 2.1 matrix in miniature, offline on a laptop's CPU: a wiring test, not a result.

    python -m phi1_jax.recipe run configs/recipes/tiny.py --root=runs/recipe

81 files of this Python's standard library stand in for The Stack, stand-in servers for the LLMs
(a rule-based annotator, scripted textbooks and exercises that fail 20% of requests), and a
0.63M-parameter model with a 128-token context is trained for 100 steps (204,800 tokens) per variant
and seed, then finetuned for 40 steps: far too small for the data to show on HumanEval. About 12
minutes on 2 CPU cores.
"""

import os

from phi1_jax.recipe import paper

STDLIB = os.path.dirname(os.__file__)
PACKAGES = ("json", "http", "email", "urllib", "logging", "collections", "asyncio")


def get_config():
  c = paper.knobs()
  c.name = "tiny"
  c.raw_inputs = ",".join(os.path.join(STDLIB, p) for p in PACKAGES)
  c.stand_ins = True
  c.wiring_test = True
  c.expected = (
    "lower canonical-solution loss after finetuning than before for every variant; filtered+textbooks <= filtered "
    "<= raw on canonical-solution loss (the paper's direction). At this size a difference inside the seeds' spread "
    "is the likely outcome, and pass@1 is 0 everywhere."
  )
  c.seeds = "0,1,2"
  c.annotate.sample = 60
  c.embed.max_len = 128
  c.embed.embedder_steps = 60
  c.filter.tasks = c.filter.workers = 2
  c.textbooks.n = 200
  c.exercises.n = 100
  c.tokenizer.vocab_size = 4096
  c.decontam.tasks = c.decontam.workers = 2
  c.pack.seq_len = 128
  c.pack.eval_fraction = 0.2
  c.pretrain.config = "configs/tiny.py"
  c.pretrain.total_steps = 100
  c.pretrain.batch_size = 16
  c.pretrain.overrides = (
    "model.d_model=64,model.n_layers=2,model.n_heads=2,model.mlp_dim=256,eval_every=50,checkpoint_every=50"
  )
  c.finetune.total_steps = 40
  c.finetune.batch_size = 16
  # the paper's finetuning lr (1e-4) and warmup (50 steps) would barely move a model in 40 steps
  c.finetune.overrides = (
    "grad_accum_steps=1,optimizer.lr=1e-3,optimizer.warmup_steps=4,eval_every=20,log_every=10,checkpoint_every=20"
  )
  c.eval.max_new_tokens = 128
  return c


def get_recipe(config):
  return paper.build(config)
