"""The OpenAI request and response shapes the server speaks: field checks and JSON builders.

Requests are plain JSON dicts checked here field by field, so that every mistake is a 400 with an
OpenAI error body naming the field (`{"error": {"message", "type", "param", "code"}}`). Unknown
fields are ignored (clients send `user`, `stream_options`, ...); known ones this server cannot
honour (`logit_bias`, non-zero penalties, `best_of` > n, `suffix`) are refused.

Chat template (a base code model has none; this one is plain and documented in docs/serving.md):
each message becomes a line `System: ...`, `User: ...` or `Assistant: ...`, the prompt ends with
`Assistant:`, and generation also stops at a new `\\nUser:` / `\\nSystem:` / `\\nAssistant:` line.
"""

from __future__ import annotations

import dataclasses
import math
import os

from phi1_jax.inference.engine import MAX_TOP_LOGPROBS, Params, Token

CHAT_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOPS = ("\nUser:", "\nSystem:", "\nAssistant:")


class ApiError(Exception):
  """An error answered in the OpenAI shape."""

  def __init__(
    self,
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    type_: str = "invalid_request_error",
  ):
    super().__init__(message)
    self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclasses.dataclass
class Request:
  """A checked completion or chat request."""

  prompts: list[list[int]]  # token ids of each prompt
  prompt_texts: list[str]
  params: Params
  n: int
  seed: int | None
  stream: bool
  include_usage: bool
  echo: bool = False
  chat: bool = False


def chat_prompt(messages) -> str:
  """The plain chat template (see the module docstring); ApiError for malformed messages."""
  if not isinstance(messages, list) or not messages:
    raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
  lines = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
      raise ApiError(400, f"messages[{i}]: 'role' must be one of {sorted(CHAT_ROLES)}", "messages")
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
      if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise ApiError(400, f"messages[{i}]: only text content parts are supported", "messages")
      content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
      raise ApiError(400, f"messages[{i}]: 'content' must be a string", "messages")
    lines.append(f"{CHAT_ROLES[m['role']]}: {content}")
  return "\n".join(lines) + "\nAssistant:"


def _number(body, name, default, lo, hi, *, integer=False, lo_open=False):
  value = body.get(name)
  if value is None:
    return default
  kind = "an integer" if integer else "a number"
  if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
    raise ApiError(400, f"'{name}' must be {kind}, got {value!r}", name)
  if not math.isfinite(value):  # json.loads reads NaN and Infinity, which pass every comparison below
    raise ApiError(400, f"'{name}' must be a finite number, got {value!r}", name)
  if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
    bounds = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
    raise ApiError(400, f"'{name}' must be {bounds}, got {value!r}", name)
  return value


def _bool(body, name, default=False):
  value = body.get(name)
  if value is None:
    return default
  if not isinstance(value, bool):
    raise ApiError(400, f"'{name}' must be true or false, got {value!r}", name)
  return value


def _stop(body) -> tuple[str, ...]:
  stop = body.get("stop")
  if stop is None:
    return ()
  if isinstance(stop, str):
    stop = [stop]
  if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
    raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
  return tuple(s for s in stop if s)


def _prompts(value, tokenizer) -> tuple[list[list[int]], list[str]]:
  """A string, a list of strings, a list of token ids or a list of such lists -> (ids, texts)."""

  def ids_ok(x):
    return isinstance(x, list) and x and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

  if isinstance(value, str):
    value = [value]
  elif ids_ok(value):
    value = [value]
  if not isinstance(value, list) or not value:
    raise ApiError(
      400, "'prompt' must be a string, a list of strings, a list of token ids or a list of those", "prompt"
    )
  ids, texts = [], []
  for p in value:
    if isinstance(p, str):
      ids.append(tokenizer.encode(p))
      texts.append(p)
    elif ids_ok(p):
      bad = [t for t in p if not 0 <= t < tokenizer.vocab_size]
      if bad:
        raise ApiError(400, f"'prompt' holds token id {bad[0]}, outside [0, {tokenizer.vocab_size})", "prompt")
      ids.append(list(p))
      texts.append(tokenizer.decode(p))
    else:
      raise ApiError(
        400, "'prompt' must be a string, a list of strings, a list of token ids or a list of those", "prompt"
      )
    if not ids[-1]:
      raise ApiError(400, "'prompt' is empty (it encodes to no tokens)", "prompt")
  return ids, texts


def parse(body, tokenizer, *, chat: bool, max_seq_len: int, max_sequences: int) -> Request:
  """A checked Request from a JSON body; ApiError naming the first bad field. `max_sequences` is
  the most the server ever holds (running + waiting): a request for more could never be served."""
  if not isinstance(body, dict):
    raise ApiError(400, "the request body must be a JSON object")
  for name, off in (("presence_penalty", 0), ("frequency_penalty", 0), ("logit_bias", None), ("suffix", None)):
    if body.get(name) not in (None, off, {}):
      raise ApiError(400, f"'{name}' is not supported by this server", name)
  n = _number(body, "n", 1, 1, max_sequences, integer=True)
  if body.get("best_of") not in (None, n):
    raise ApiError(400, "'best_of' other than n is not supported by this server", "best_of")
  if chat:
    if "messages" not in body:
      raise ApiError(400, "'messages' is required", "messages")
    text = chat_prompt(body["messages"])
    prompts, texts = [tokenizer.encode(text)], [text]
    default_max = None
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    body = {**body, "max_tokens": max_tokens}
    want_logprobs = _bool(body, "logprobs")
    top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
    logprobs = top if want_logprobs else None
    echo = False
  else:
    if "prompt" not in body:
      raise ApiError(400, "'prompt' is required", "prompt")
    prompts, texts = _prompts(body["prompt"], tokenizer)
    default_max = 16  # OpenAI's default for completions
    logprobs = _number(body, "logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
    echo = _bool(body, "echo")
  if len(prompts) * n > max_sequences:  # a 429 would be retried forever: it would never fit
    raise ApiError(
      400,
      f"{len(prompts)} prompts x n={n} is {len(prompts) * n} sequences, more than the "
      f"{max_sequences} this server ever holds (its --max_batch + --max_queue); send fewer prompts or "
      "choices per request",
      "n" if n > 1 else "prompt",
    )
  longest = max(len(p) for p in prompts)
  room = max_seq_len - longest
  max_tokens = _number(body, "max_tokens", default_max, 0, None, integer=True)
  if max_tokens is None:  # chat: as many as fit
    max_tokens = max(room, 0)
  if longest + max_tokens > max_seq_len:
    raise ApiError(
      400,
      f"this model's maximum context length is {max_seq_len} tokens, but {longest + max_tokens} "
      f"were requested ({longest} in the prompt, {max_tokens} for the completion)",
      "max_tokens" if longest < max_seq_len else "prompt",
      "context_length_exceeded",
    )
  if max_tokens == 0 and not (echo and logprobs is not None):
    raise ApiError(
      400, "'max_tokens' must be >= 1 (0 only with echo and logprobs: the prompt's log-probs)", "max_tokens"
    )
  temperature = _number(body, "temperature", 1.0, 0, 2)
  top_p = _number(body, "top_p", 1.0, 0, 1, lo_open=True)
  top_k = _number(body, "top_k", 0, -1, None, integer=True)  # vLLM's extension; -1 or 0: off
  seed = _number(body, "seed", None, -(2**63), 2**64 - 1, integer=True)
  stream = _bool(body, "stream")
  options = body.get("stream_options") or {}
  if not isinstance(options, dict):
    raise ApiError(400, "'stream_options' must be an object", "stream_options")
  stop = _stop(body) + (CHAT_STOPS if chat else ())
  params = Params(
    max_tokens=max_tokens,
    temperature=float(temperature),
    top_p=float(top_p),
    top_k=max(top_k, 0),
    seed=0,
    stop=stop,
    logprobs=logprobs,
    prompt_logprobs=echo and logprobs is not None,
  )
  return Request(
    prompts=prompts,
    prompt_texts=texts,
    params=params,
    n=n,
    seed=seed,
    stream=stream,
    include_usage=bool(options.get("include_usage")),
    echo=echo,
    chat=chat,
  )


def choice_seed(req: Request, j: int) -> int:
  """Choice j of a request with a seed draws with seed + j (choice 0 equals a one-choice request);
  without a seed, a fresh random one."""
  if req.seed is None:
    return int.from_bytes(os.urandom(4), "little")
  return req.seed + j


# ---------------------------------------------------------------- response pieces


def completion_logprobs(tokens: list[Token], tokenizer, offset: int) -> dict:
  """The completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
  out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
  for t in tokens:
    piece = tokenizer.decode([t.id])
    out["tokens"].append(piece)
    out["token_logprobs"].append(t.logprob)
    out["top_logprobs"].append(None if t.top is None else {tokenizer.decode([i]): lp for i, lp in t.top})
    out["text_offset"].append(offset)
    offset += len(piece)
  return out


def chat_logprobs(tokens: list[Token], tokenizer) -> dict:
  """The chat `logprobs` object ({"content": [{token, logprob, bytes, top_logprobs}]})."""

  def entry(i, lp):
    piece = tokenizer.decode([i])
    return {"token": piece, "logprob": lp, "bytes": list(piece.encode())}

  return {
    "content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]} for t in tokens]
  }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
  return {
    "prompt_tokens": prompt_tokens,
    "completion_tokens": completion_tokens,
    "total_tokens": prompt_tokens + completion_tokens,
  }
