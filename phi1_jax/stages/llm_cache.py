"""The LLM client's answer cache: what was paid for once is never paid for again.

Answers are kept in SQLite (WAL) by `request_key`, the sha256 of the endpoint and the full JSON
body (model, messages or prompt, every sampling parameter, seed); the base URL is not in the key,
so the same model behind another address answers from the cache. phi1_jax.stages.llm commits each
answer here the moment it arrives, before handing it to the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path


def request_key(endpoint: str, body: dict) -> str:
  """The cache key of a request: sha256 of its endpoint and body as canonical JSON."""
  canonical = json.dumps(
    {"endpoint": endpoint, "body": body}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
  )
  return hashlib.sha256(canonical.encode()).hexdigest()


class Cache:
  """Answers by request key in SQLite (WAL): each answer committed on its own, at once.

  WAL with synchronous=NORMAL keeps every committed answer when the process is killed (only a
  power loss could drop the last few). Several processes may share one file.
  """

  def __init__(self, path: str | os.PathLike):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    self.db = sqlite3.connect(str(path), timeout=60, isolation_level=None)
    self.db.execute("PRAGMA journal_mode=WAL")
    self.db.execute("PRAGMA synchronous=NORMAL")
    self.db.execute(
      "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, endpoint TEXT, request TEXT, "
      "response TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)"
    )

  def get(self, key: str) -> tuple[str, str] | None:
    """(endpoint, response JSON) or None."""
    return self.db.execute("SELECT endpoint, response FROM answers WHERE key = ?", (key,)).fetchone()

  def put(self, request, response: dict, usage: dict) -> None:
    """Commits `request`'s (an llm.Request) answer at once: a kill after this never loses it."""
    self.db.execute(
      "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)",
      (
        request.key,
        request.endpoint,
        json.dumps(request.body, sort_keys=True),
        json.dumps(response),
        usage["prompt_tokens"],
        usage["completion_tokens"],
        time.time(),
      ),
    )

  def __len__(self) -> int:
    return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

  def close(self) -> None:
    self.db.close()
