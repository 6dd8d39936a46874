"""phi-1 (1.3B) pretraining on CodeTextbook, the paper's settings.

Effective batch 1024 x 2048 tokens, peak lr 1e-3, warmup 750, weight decay 0.1, attention and
residual dropout 0.1, 36,000 steps (phi-1-base is the 24,000-step checkpoint). Set the data:
--config.data.mixture=/data/code_filtered:0.87,/data/textbooks:0.13
"""

from phi1_jax.config import PHI1_MODEL, base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config(**PHI1_MODEL, attn_dropout=0.1, resid_dropout=0.1, dtype="bfloat16",
                         attention_impl="auto", remat="save_dots")
  c.seq_len = 2048
  c.batch_size = 1024
  c.grad_accum_steps = 8  # 128 sequences per microbatch: fit to the mesh's memory
  c.total_steps = 36_000
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 750
  c.optimizer.weight_decay = 0.1
  c.loss_chunk_size = 512
  c.data.mixture = ""  # required: packed CodeTextbook folders with weights
  c.log_every = 20
  c.eval_every = 1000
  c.checkpoint_every = 1000
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
