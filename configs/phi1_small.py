"""phi-1-small (350M) pretraining: phi-1's recipe at 20 layers x 1024."""

from phi1_jax.config import PHI1_SMALL_MODEL, base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config(**PHI1_SMALL_MODEL, attn_dropout=0.1, resid_dropout=0.1, dtype="bfloat16",
                         attention_impl="auto", remat="none")
  c.seq_len = 2048
  c.batch_size = 1024
  c.grad_accum_steps = 8
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
