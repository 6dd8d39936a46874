"""phi-1-small (350M) pretraining: phi-1's recipe at 20 layers x 1024."""

from phi1_jax.config import paper_pretrain_config
from phi1_jax.model.config import PHI1_SMALL


def get_config():
  return paper_pretrain_config(PHI1_SMALL, remat="none")
