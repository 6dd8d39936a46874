"""Default trainer config; `configs/*.py` start from `base_config()` and change what they need.

Field names that users, sweeps and scripts rely on are kept stable: total_steps, batch_size
(global, in sequences), seq_len, optimizer.lr, log_every, eval_every, checkpoint_every, seed,
init_from.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from phi1_jax.model.config import ARCHITECTURE_FIELDS, PHI1, ModelConfig


def model_config(preset: ModelConfig = PHI1, **fields) -> ml_collections.ConfigDict:
  """Every `phi1_jax.model.config.ModelConfig` field, from `preset` (a ModelConfig, e.g. one of
  `phi1_jax.model.config.PRESETS`) with `fields` changed, so overrides of any of them type-check."""
  base = dataclasses.asdict(preset)
  unknown = set(fields) - set(base)
  if unknown:
    raise ValueError(f"unknown model field(s): {sorted(unknown)}")
  base.update(fields)
  return ml_collections.ConfigDict(base)


def unset_architecture(model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`model` with the architecture fields unset (typed placeholders: still overridable)."""
  for name in ARCHITECTURE_FIELDS:
    model[name] = config_dict.placeholder(type(model[name]))
  return model


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 32  # global, in sequences, per optimizer step
  c.grad_accum_steps = 1  # microbatches per step: batch_size / grad_accum_steps sequences at a time
  c.seq_len = 2048
  c.init_from = ""  # a phi1_jax checkpoint or a Hugging Face folder: finetune with a fresh optimizer
  c.run_until_step = 0  # stop this run (after a checkpoint) at this step; 0 = total_steps

  c.model = model_config()

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-3  # peak
  c.optimizer.warmup_steps = 750
  c.optimizer.end_lr = 0.0  # linear decay from peak to this at total_steps
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1  # not applied to biases, LayerNorms
  c.optimizer.grad_clip = 1.0  # global norm; 0 disables
  # skip the update of a step whose finite loss or gradient norm exceeds factor x its mean over the last
  # `window` accepted steps (0: off; e.g. factor=2.0, window=100); the statistics are checkpointed
  c.spike_guard = ml_collections.ConfigDict(dict(factor=0.0, window=100))

  c.data = ml_collections.ConfigDict()
  # "stdlib" (the embedded default: this interpreter's standard library, built on first use)
  # or packed folders with weights: "/data/code:0.9,/data/textbooks:0.1".
  c.data.mixture = "stdlib"
  c.data.eval_path = ""  # packed folder whose eval split gives eval loss; default: first source
  c.data.cache_dir = "~/.cache/phi1_jax"  # where "stdlib" data is built
  c.data.stdlib_vocab_size = 4096
  c.data.stdlib_max_bytes = 8_000_000  # cap on the "stdlib" corpus (~2.5M tokens)
  c.data.tokenizer = ""  # default: the tokenizer named in the packed data's manifest

  c.loss_chunk_size = 0  # >0: cross-entropy over chunks of this many positions (big vocab)
  c.log_every = 10
  c.group_norms = True  # parameter, gradient and update norms per group (embedding, attention, ...) in the metrics
  c.group_norms_per_layer = False  # and per layer for attention, mlp and layer_norm (12 scalars a layer)
  c.eval_every = 200
  c.eval_batches = 8
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.humaneval_every = 0  # greedy HumanEval pass@1 every N steps (0: off)
  c.humaneval_limit = 0  # problems per HumanEval run (0: all 164)
  c.humaneval_loss_every = 0  # mean loss of canonical HumanEval solutions every N steps
  c.humaneval_sandbox = "bwrap"  # how humaneval_every runs the samples: bwrap (OS sandbox) or guard

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # -1 fills the rest
  # logical axis -> mesh axes (a string, a tuple of strings, or None: replicated)
  c.sharding_rules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
  )
  c.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=0, process_id=-1, auto=False))
  c.peak_flops_per_device = 0.0  # for MFU; 0 = look the device kind up
  # a jax.profiler trace of steps start_step .. start_step + steps - 1 in workdir/profile/ (steps=0: off)
  c.profile = ml_collections.ConfigDict(dict(start_step=10, steps=0, process=0))  # process -1: every process
  # Weights & Biases (the wandb extra): the metrics and the config, process 0 only; project "" = off.
  # tags: comma-separated; group: a sweep's trials share one (the sweep sets it and name);
  # mode: "" (WANDB_MODE, else online), "online", "offline" or "disabled"
  c.wandb = ml_collections.ConfigDict(dict(project="", entity="", name="", group="", tags="", mode=""))
  return c


def paper_pretrain_config(preset: ModelConfig, remat: str) -> ml_collections.ConfigDict:
  """The paper's pretraining recipe on CodeTextbook for a model shape (a preset): effective batch
  1024 x 2048, peak lr 1e-3, warmup 750, weight decay 0.1, attention and residual dropout 0.1,
  36,000 steps. `data.mixture` must be set to packed folders."""
  c = base_config()
  c.model = model_config(
    preset, attn_dropout=0.1, resid_dropout=0.1, dtype="bfloat16", attention_impl="auto", remat=remat
  )
  c.seq_len = 2048
  c.batch_size = 1024
  c.grad_accum_steps = 8  # 128 sequences per microbatch: fit it to the mesh (python -m phi1_jax.plan)
  c.total_steps = 36_000
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 750
  c.optimizer.weight_decay = 0.1
  c.loss_chunk_size = 512
  c.data.mixture = ""
  c.log_every = 20
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
