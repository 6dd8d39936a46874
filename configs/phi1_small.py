"""phi-1-small (350M) pretraining: phi-1's recipe at 20 layers x 1024."""

from phi1_jax.config import PHI1_SMALL_MODEL, paper_pretrain_config


def get_config():
  return paper_pretrain_config(PHI1_SMALL_MODEL, remat="none")
