"""CPU demo: a ~2M-parameter Phi on this interpreter's standard library (built on first use).

python -m phi1_jax.train --config=configs/tiny.py --workdir=runs/tiny
"""

from phi1_jax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config(
    vocab_size=4096,
    d_model=128,
    n_layers=4,
    n_heads=4,
    head_dim=32,
    mlp_dim=512,
    rotary_dim=16,
    max_seq_len=128,
    eos_id=0,
    scan_layers=False,
  )  # 4 small layers: unrolled runs faster
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
