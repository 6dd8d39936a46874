"""The hook for the embedding-distance method: an embedder from `phi1_jax.embed` (the curation stage's).

An embedder is any object with `embed(texts: list[str]) -> array [len(texts), D]`. `--embed_checkpoint`
loads one with `phi1_jax.embed.load_embedder(checkpoint, max_len=...)`; that module is built by the
curation stage and is not in every checkout, so without it the flag stops the run with one line
before any work. Python callers (and tests) can pass any embedder to `decontam.run(embedder=...)`.
"""

from __future__ import annotations

import functools
import importlib


class EmbedderUnavailable(ValueError):
  pass


@functools.lru_cache(maxsize=2)  # one load per process, however many tasks it runs
def load_embedder(checkpoint: str, max_len: int = 512, module: str = "phi1_jax.embed"):
  try:
    embed = importlib.import_module(module)
  except ImportError as e:
    raise EmbedderUnavailable(f"--embed_checkpoint needs {module} (the curation stage's embedder), which "
                              f"cannot be imported here: {e}") from None
  loader = getattr(embed, "load_embedder", None)
  if loader is None:
    raise EmbedderUnavailable(f"--embed_checkpoint: {module} has no load_embedder(checkpoint, max_len)")
  return loader(checkpoint, max_len=max_len)
