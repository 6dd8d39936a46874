"""FLOPs accounting for MFU: the training FLOPs per token of a model, and the peak of each device kind."""

from __future__ import annotations

from phi1_jax.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device (vendor data sheets), looked up by jax's `device_kind`.
PEAK_BF16_FLOPS = {
  "H200": 989e12,
  "H100": 989e12,
  "A100": 312e12,
  "L40S": 362e12,
  "A10G": 125e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
}


def peak_flops(device) -> float:
  """Peak bf16 FLOP/s of one device, or 0.0 where unknown (CPU): MFU is then not reported."""
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return 0.0


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (parameters in matmuls) + attention scores and values.

  Matmul parameters exclude the embedding lookup and include lm_head. Attention adds
  12 x layers x heads x head_dim x seq_len (QK^T and AV, forward and backward: the PaLM
  appendix B formula, counting the full square as most MFU reports do).
  """
  D, F, N, H, V, Y = cfg.d_model, cfg.mlp_dim, cfg.n_heads, cfg.head_dim, cfg.vocab_size, cfg.n_layers
  per_layer = 4 * D * N * H + 2 * D * F  # q, k, v, dense + fc1, fc2
  matmul_params = Y * per_layer + D * V
  return 6 * matmul_params + 12 * Y * N * H * seq_len
