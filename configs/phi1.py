"""phi-1 (1.3B) pretraining on CodeTextbook, the paper's settings.

Effective batch 1024 x 2048 tokens, peak lr 1e-3, warmup 750, weight decay 0.1, attention and
residual dropout 0.1, 36,000 steps (phi-1-base is the 24,000-step checkpoint). Set the data:
--config.data.mixture=/data/code_filtered:0.87,/data/textbooks:0.13
"""

from phi1_jax.config import paper_pretrain_config
from phi1_jax.model.config import PHI1


def get_config():
  return paper_pretrain_config(PHI1, remat="save_dots")
