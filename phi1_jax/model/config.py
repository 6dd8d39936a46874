"""The one source of model defaults: `ModelConfig` (defaults are phi-1, 1.3B) and the named presets.

`phi1_jax.config` builds the trainer's ml-collections `model` block from these, so `configs/*.py`,
the model and the converters read the same numbers. Imports no jax, so the config schema loads
without it.

    ModelConfig()            # phi-1 (1.3B)
    PRESETS["phi1_small"]    # phi-1-small (350M): 20 layers x 1024
    PRESETS["tiny"]          # the CPU demo (about 2M parameters)
"""

from __future__ import annotations

import dataclasses

import ml_dtypes  # noqa: F401 -- registers bfloat16 with numpy, so np.dtype("bfloat16") checks it
import numpy as np

REMAT_NAMES = ("none", "full", "save_dots")  # phi1_jax.model.phi.REMAT_POLICIES maps them to jax policies
ATTENTION_IMPLS = ("xla", "cudnn", "pallas", "auto")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a Phi model. Defaults are phi-1 (1.3B)."""

  vocab_size: int = 51200
  d_model: int = 2048
  n_layers: int = 24
  n_heads: int = 32
  head_dim: int = 64
  mlp_dim: int = 8192
  rotary_dim: int = 32
  rope_theta: float = 10000.0
  max_seq_len: int = 2048
  ln_eps: float = 1e-5
  embd_dropout: float = 0.0
  attn_dropout: float = 0.0
  resid_dropout: float = 0.0
  dtype: str = "float32"  # compute dtype; parameters stay float32
  # "xla", "cudnn" (fused kernel on GPU, no dropout), "pallas" (phi1_jax.model.flash's kernel, dropout
  # inside; interpreted off GPU) or "auto" (on GPU: pallas with attention dropout, else cudnn)
  attention_impl: str = "xla"
  doc_mask: bool = False  # forbid attention across <|endoftext|> in packed sequences
  eos_id: int = 50256  # the <|endoftext|> id, used by doc_mask
  remat: str = "none"  # "none", "full" or "save_dots"
  scan_layers: bool = True  # False unrolls the layers: longer compiles, a faster step on small models
  init_std: float = 0.02

  def __post_init__(self):
    if self.rotary_dim % 2 or not 0 <= self.rotary_dim <= self.head_dim:
      raise ValueError(f"model.rotary_dim={self.rotary_dim} must be even and in [0, head_dim={self.head_dim}]")
    if self.remat not in REMAT_NAMES:
      raise ValueError(f"model.remat={self.remat!r} is not one of {sorted(REMAT_NAMES)}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}")
    np.dtype(self.dtype)  # raises on an unknown dtype name

  @classmethod
  def from_dict(cls, d) -> "ModelConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown model config field(s): {sorted(unknown)}")
    return cls(**d)


# What fixes the function a checkpoint computes. A finetuning config leaves them unset and the
# trainer takes them from config.init_from; dropout, dtype, attention_impl, remat, scan_layers,
# doc_mask and init_std are training settings, taken from the config.
ARCHITECTURE_FIELDS = (
  "vocab_size",
  "d_model",
  "n_layers",
  "n_heads",
  "head_dim",
  "mlp_dim",
  "rotary_dim",
  "rope_theta",
  "max_seq_len",
  "ln_eps",
  "eos_id",
)

PHI1 = ModelConfig()
PHI1_SMALL = dataclasses.replace(PHI1, d_model=1024, n_layers=20, n_heads=16, mlp_dim=4096)
TINY = ModelConfig(
  vocab_size=4096,
  d_model=128,
  n_layers=4,
  n_heads=4,
  head_dim=32,
  mlp_dim=512,
  rotary_dim=16,
  max_seq_len=128,
  eos_id=0,
  scan_layers=False,  # 4 small layers: unrolled runs faster
)
PRESETS = {"phi1": PHI1, "phi1_small": PHI1_SMALL, "tiny": TINY}
