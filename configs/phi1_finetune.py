"""phi-1 finetuning on CodeExercises: batch 256, lr 1e-4, warmup 50, weight decay 0.01, 6,000 steps.

--config.init_from=WORKDIR_OF_PRETRAINING (or a Hugging Face folder) --config.data.mixture=/data/exercises
"""

from phi1_jax.config import PHI1_MODEL, base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config(**PHI1_MODEL, attn_dropout=0.1, resid_dropout=0.1, dtype="bfloat16",
                         attention_impl="auto", remat="save_dots")
  c.seq_len = 2048
  c.batch_size = 256
  c.grad_accum_steps = 2
  c.total_steps = 6_000
  c.optimizer.lr = 1e-4
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.01
  c.loss_chunk_size = 512
  c.data.mixture = ""
  c.log_every = 20
  c.eval_every = 500
  c.checkpoint_every = 500
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
