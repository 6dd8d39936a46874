"""CPU demo: a ~2M-parameter Phi on this interpreter's standard library (built on first use).

python -m phi1_jax.train --config=configs/tiny.py --workdir=runs/tiny
"""

from phi1_jax.config import base_config, model_config
from phi1_jax.model.config import TINY


def get_config():
  c = base_config()
  c.model = model_config(TINY)
  c.data.stdlib_vocab_size = 4096
  c.seq_len = 128
  c.batch_size = 16
  c.total_steps = 300
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 30
  c.optimizer.weight_decay = 0.1
  c.log_every = 10
  c.eval_every = 50
  c.eval_batches = (
    16  # the whole held-out split (about 240 records): the first few documents alone are not representative
  )
  c.checkpoint_every = 100
  return c
