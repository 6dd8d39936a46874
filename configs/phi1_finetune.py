"""phi-1 finetuning on CodeExercises: batch 256, lr 1e-4, warmup 50, weight decay 0.01, 6,000 steps.

--config.init_from=WORKDIR_OF_PRETRAINING (or a Hugging Face folder) --config.data.mixture=/data/exercises

The architecture (sizes, rotary dimensions, context length, vocabulary, eos id) and seq_len (the
context length) come from the init_from checkpoint; dropout and numerics are this config's.
"""

from ml_collections import config_dict

from phi1_jax.config import paper_pretrain_config, unset_architecture
from phi1_jax.model.config import PHI1


def get_config():
  c = paper_pretrain_config(PHI1, remat="save_dots")
  c.model = unset_architecture(c.model)
  c.seq_len = config_dict.placeholder(int)
  c.batch_size = 256
  c.grad_accum_steps = 2
  c.total_steps = 6_000
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.01
  c.eval_every = 500
  c.checkpoint_every = 500
  return c
