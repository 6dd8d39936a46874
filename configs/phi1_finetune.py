"""phi-1 finetuning on CodeExercises: batch 256, lr 1e-4, warmup 50, weight decay 0.01, 6,000 steps.

--config.init_from=WORKDIR_OF_PRETRAINING (or a Hugging Face folder) --config.data.mixture=/data/exercises
"""

from phi1_jax.config import PHI1_MODEL, paper_pretrain_config


def get_config():
  c = paper_pretrain_config(PHI1_MODEL, remat="save_dots")
  c.batch_size = 256
  c.grad_accum_steps = 2
  c.total_steps = 6_000
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.01
  c.eval_every = 500
  c.checkpoint_every = 500
  return c
