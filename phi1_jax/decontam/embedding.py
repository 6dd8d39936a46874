"""The embedder of the L2 method: `phi1_jax.stages.embed.Embedder` (the curation stage's), loaded once per process.

An embedder is any object with `embed(texts: list[str]) -> array [len(texts), D]`; `--embed_checkpoint`
loads `Embedder(checkpoint, max_len=...)` (masked-mean pooling), Python callers (and tests) can pass
any embedder to `decontam.run(embedder=...)`.
"""

from __future__ import annotations

import functools
from pathlib import Path


class EmbedderUnavailable(ValueError):
  pass


@functools.lru_cache(maxsize=2)  # one load per process, however many tasks it runs
def load_embedder(checkpoint: str, max_len: int = 512):
  if not Path(checkpoint).exists():
    raise EmbedderUnavailable(f"--embed_checkpoint={checkpoint}: not found")
  from phi1_jax.stages.embed import Embedder  # imports JAX: only when the L2 method is asked for

  try:
    return Embedder(checkpoint, max_len=max_len)
  except (ValueError, OSError) as e:  # not a checkpoint, no tokenizer beside it, max_len too long
    reason = str(e).replace(" (pass --tokenizer)", "")  # decontam takes the tokenizer beside the checkpoint
    raise EmbedderUnavailable(f"--embed_checkpoint={checkpoint}: {reason}") from None
