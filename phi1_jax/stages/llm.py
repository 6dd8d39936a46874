"""The one way this project calls an LLM: any OpenAI-compatible endpoint, never paying twice.

    llm = LLM(base_url="http://127.0.0.1:8000/v1", cache_path="OUT/llm_cache.sqlite",
              concurrency=8, max_tokens_total=2_000_000, metrics_path="OUT/llm_metrics.jsonl")
    answer = await llm.ask(chat_request("gpt-4o-mini", [{"role": "user", "content": "..."}],
                                        temperature=1.0, max_tokens=800, seed=7))
    answer.text, answer.usage, answer.cached

- Client: the `openai` package's AsyncOpenAI with `base_url` (OpenAI, vLLM, llama.cpp,
  `phi1_jax.serve`); the key comes from the environment variable `api_key_env` (default
  OPENAI_API_KEY; a local endpoint needs none). The SDK's own retries are off: this module retries,
  so it can count every fault and honour Retry-After.
- Retries with exponential backoff and jitter on 429 (waiting at least `Retry-After`), 408/409/5xx,
  dropped connections, timeouts and garbage 200s (not JSON, no choices, no text): up to
  `max_attempts` tries, then `RequestFailed` for that request only. 400/422: `RequestFailed` at
  once (the request itself is wrong). 401/403/404: `EndpointError` (wrong key, URL or model: every
  request would fail, the caller stops the run with one line).
- A dead endpoint: when every try has failed for `give_up_after_s` (60 s by default; from the
  first failure after the last answer), tries of more than one request (one bad request retried
  is not a dead endpoint), and no request is at work on the server (in flight for over half the
  window, at most 5 s: a slow answer under a rate limit is no dead endpoint), every request
  raises `EndpointError` naming the last error, so a run against a server that went away ends
  within that window instead of retrying for minutes. (A server that accepts connections and
  never answers takes `timeout_s` more.)
- Failed requests: the first few distinct reasons are logged as they happen; `summary()["failures"]`
  counts them by reason and `describe_failures` makes the one line every stage prints.
- Cache (phi1_jax.stages.llm_cache): SQLite in WAL mode keyed by sha256 of (endpoint, the full JSON body: model, messages or
  prompt, every sampling parameter, seed). An answer is committed the moment it arrives, before
  `ask` returns it, so a rerun, or a resume after SIGKILL at any moment, never pays for an answer it
  received. Identical requests in flight at once are sent once. The base URL is not in the key:
  the same model behind another address answers from the cache.
- Caps: `max_requests` (HTTP requests sent by this process, retries included) and
  `max_tokens_total` (prompt + completion tokens of every answer used, cached ones included, so a
  rerun of a capped run stops where it stopped). When a cap is reached, one line says so, requests
  already sent finish and are cached, new ones raise `BudgetExhausted`; cached answers are still
  served.
- Accounting: `summary()` (requests, cache hits, retries by reason, failures, tokens paid and
  used) for a stage's manifest; a progress line with rate and ETA every `progress_every_s` on
  stderr and the same numbers as JSON rows in `metrics_path`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import email.utils
import json
import os
import random
import re
import socket
import sys
import time
import urllib.parse
from pathlib import Path

import openai

from phi1_jax.stages.llm_cache import Cache, request_key

ENDPOINTS = {"chat": "/chat/completions", "completion": "/completions"}
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
FATAL_STATUSES = {401, 403, 404}
MAX_RETRY_AFTER_S = 600.0
REASONS_SHOWN = 3  # distinct failure reasons logged and printed; more are only counted
REASONS_KEPT = 20  # distinct reasons a summary keeps; the rest count under OTHER_REASONS
OTHER_REASONS = "(other reasons)"


class LLMError(Exception):
  """Base of this module's errors."""


class EndpointError(LLMError):
  """The endpoint refuses every request (bad key, URL or model): stop the run."""


class RequestFailed(LLMError):
  """One request failed for good (retries spent, or the endpoint calls it a bad request)."""


class BudgetExhausted(LLMError):
  """A cap was reached: the request was not sent."""


@dataclasses.dataclass(frozen=True)
class Request:
  """An endpoint ("chat" or "completion") and the JSON body sent to it."""

  endpoint: str
  body: dict

  @property
  def key(self) -> str:
    return request_key(self.endpoint, self.body)


@dataclasses.dataclass
class Answer:
  key: str
  text: str  # choices[0].message.content (chat) or choices[0].text (completion)
  response: dict  # the endpoint's whole JSON answer
  usage: dict  # {"prompt_tokens", "completion_tokens"}
  cached: bool  # served from the cache (paid by an earlier run or request)


def chat_request(model: str, messages: list[dict], **params) -> Request:
  return Request("chat", {"model": model, "messages": messages, **params})


def completion_request(model: str, prompt: str, **params) -> Request:
  return Request("completion", {"model": model, "prompt": prompt, **params})


class _Retry(Exception):
  def __init__(self, reason: str, retry_after: float | None = None, detail: str = "", no_connection: bool = False):
    super().__init__(reason)
    self.reason, self.retry_after, self.detail, self.no_connection = reason, retry_after, detail, no_connection

  def __str__(self) -> str:  # "HTTP 503 from URL: ...", "connection [Errno 111] ...", "timeout"
    return self.detail if self.detail.startswith("HTTP ") else f"{self.reason} {self.detail}".strip()


def _innermost(error: BaseException) -> BaseException:
  """The root cause of a connection error ("[Errno 111] Connection refused"), not the client's
  generic "Connection error."."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  return error


def failure_kind(reason: str) -> str:
  """A reason with its numbers blanked, so "131 were requested" and "135 were requested" count as one."""
  return re.sub(r"\d+", "#", reason)


def describe_failures(failures: dict[str, int], shown: int = REASONS_SHOWN) -> str:
  """ "71 x <reason>; 2 x <reason>; 3 more" for a summary line: the first `shown` kinds of failure,
  in order of first sight, each with the first reason seen; `failures` may merge several summaries."""
  kinds: dict[str, list] = {}
  for reason, count in failures.items():
    kinds.setdefault(failure_kind(reason), [reason, 0])[1] += count
  parts = [f"{count} x {reason}" for reason, count in list(kinds.values())[:shown]]
  rest = sum(count for _, count in list(kinds.values())[shown:])
  return "; ".join(parts + ([f"{rest} more"] if rest else []))


def parse_retry_after(value: str | None) -> float | None:
  """Seconds from a Retry-After header (seconds, or an HTTP date); None when absent or unreadable."""
  if not value:
    return None
  try:
    return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError):
    return None
  return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER_S)


def parse_answer(endpoint: str, raw_text: str) -> tuple[dict, str, dict]:
  """(response, text, usage) from a 200's body; raises _Retry("garbage") when it is not one."""
  try:
    response = json.loads(raw_text)
  except ValueError:
    raise _Retry("garbage", detail=f"not JSON: {raw_text[:80]!r}") from None
  choices = response.get("choices") if isinstance(response, dict) else None
  if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
    raise _Retry("garbage", detail="no choices")
  if endpoint == "chat":
    message = choices[0].get("message")
    text = message.get("content") if isinstance(message, dict) else None
  else:
    text = choices[0].get("text")
  if not isinstance(text, str):
    raise _Retry("garbage", detail="no text in choices[0]")
  usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
  usage = {name: int(usage.get(name) or 0) for name in ("prompt_tokens", "completion_tokens")}
  return response, text, usage


def _api_key(base_url: str, api_key_env: str, flag: str = "--base_url") -> str:
  key = os.environ.get(api_key_env)
  if key:
    return key
  host = urllib.parse.urlparse(base_url).hostname or ""
  if host in ("127.0.0.1", "localhost", "::1"):
    return "none"  # local servers (phi1_jax.serve, vLLM, llama.cpp) take any key
  raise LLMError(f"{flag} {base_url} needs an API key: set the environment variable {api_key_env}")


class LLM:
  """Asks an OpenAI-compatible endpoint, through the cache, within the caps. Use from one event loop."""

  def __init__(
    self,
    base_url: str,
    *,
    cache_path: str | os.PathLike,
    api_key_env: str = "OPENAI_API_KEY",
    concurrency: int = 8,
    timeout_s: float = 120.0,
    max_attempts: int = 8,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    max_requests: int | None = None,
    max_tokens_total: int | None = None,
    metrics_path: str | os.PathLike | None = None,
    progress_every_s: float = 10.0,
    total: int | None = None,
    log=None,
    give_up_after_s: float = 60.0,
  ):
    if concurrency < 1 or max_attempts < 1 or timeout_s <= 0 or give_up_after_s <= 0:
      raise LLMError("concurrency and max_attempts must be >= 1, timeout_s and give_up_after_s > 0")
    self.base_url = base_url
    self.client = openai.AsyncOpenAI(
      base_url=base_url, api_key=_api_key(base_url, api_key_env), max_retries=0, timeout=timeout_s
    )
    self.cache = Cache(cache_path)
    self.concurrency, self.max_attempts = concurrency, max_attempts
    self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
    self.max_requests, self.max_tokens_total = max_requests, max_tokens_total
    self.total, self.progress_every_s = total, progress_every_s
    self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if metrics_path:
      Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
    self.metrics = open(metrics_path, "a") if metrics_path else None
    self._semaphore: asyncio.Semaphore | None = None
    self._down_event: asyncio.Event | None = None  # set when `down` is: backoffs end at once
    self._inflight: dict[str, asyncio.Future] = {}
    self.exhausted: str | None = None  # which cap stopped new requests
    self.counts = collections.Counter()  # sent, paid, cached, answered, failed, not_sent
    self.retries = collections.Counter()  # by reason: 429, 500, connection, timeout, garbage, ...
    self.tokens = collections.Counter()  # {prompt,completion}_tokens_{paid,used}
    self.started = time.monotonic()
    self._last_progress = self.started
    self._reached = False  # any HTTP answer at all from the endpoint, even an error
    self._unreached = 0  # connections refused before that: a wrong URL or a server that is not up
    self.give_up_after_s = give_up_after_s
    self._failing_since: float | None = None  # first failed try since the last answer
    self._failing_keys: set[str] = set()  # requests that failed since then (two are enough to know)
    self._sending: dict[str, float] = {}  # request key -> when its try was sent, for tries in flight
    self._last_error = ""
    self.down: str | None = None  # why the endpoint counts as dead: every request raises EndpointError
    self.failures: dict[str, list] = {}  # failure_kind -> [first reason seen, count], in order of first sight

  # ------------------------------------------------------------ public

  async def ask(self, request: Request) -> Answer:
    """The answer to `request`: from the cache, or from the endpoint (then cached at once).

    Raises RequestFailed (this request only), BudgetExhausted (a cap: not sent) or EndpointError.
    """
    if request.endpoint not in ENDPOINTS:
      raise LLMError(f"unknown endpoint {request.endpoint!r} (want one of {sorted(ENDPOINTS)})")
    key = request.key
    while key in self._inflight:  # the same request is on its way: wait for it, pay once
      try:
        await asyncio.shield(self._inflight[key])
      except Exception:
        pass
    answer = self._cached(key)
    if answer is not None:
      self._account(answer)
      return answer
    future = asyncio.get_running_loop().create_future()
    self._inflight[key] = future
    try:
      answer = await self._fetch(request)
      self._account(answer)
      return answer
    except RequestFailed as error:
      self.counts["failed"] += 1
      self._count_failure(str(error))
      self._progress()
      raise
    finally:
      del self._inflight[key]
      future.set_result(None)

  def summary(self) -> dict:
    """Counts for a manifest: requests, cache hits, retries by reason, failures, tokens, caps."""
    elapsed = time.monotonic() - self.started
    return {
      "base_url": self.base_url,
      "requests_sent": self.counts["sent"],
      "answers_paid": self.counts["paid"],
      "answers_cached": self.counts["cached"],
      "answers": self.counts["answered"],
      "failed": self.counts["failed"],
      "failures": {reason: count for reason, count in self.failures.values()},
      "not_sent_over_cap": self.counts["not_sent"],
      "retries": dict(self.retries),
      "tokens": dict(self.tokens),
      "caps": {"max_requests": self.max_requests, "max_tokens_total": self.max_tokens_total},
      "stopped_by_cap": self.exhausted,
      "endpoint_down": self.down,
      "seconds": round(elapsed, 3),
    }

  def tokens_used(self) -> int:
    return self.tokens["prompt_tokens_used"] + self.tokens["completion_tokens_used"]

  async def aclose(self) -> None:
    self._progress(force=True)
    await self.client.close()
    self.cache.close()
    if self.metrics:
      self.metrics.close()

  # ------------------------------------------------------------ internals

  def _cached(self, key: str) -> Answer | None:
    row = self.cache.get(key)
    if row is None:
      return None
    endpoint, response_json = row
    response, text, usage = parse_answer(endpoint, response_json)
    self.counts["cached"] += 1
    return Answer(key, text, response, usage, cached=True)

  def _count_failure(self, reason: str) -> None:
    kind = failure_kind(reason)
    if kind not in self.failures and len(self.failures) >= REASONS_KEPT:
      kind = reason = OTHER_REASONS
    if kind not in self.failures:
      self.failures[kind] = [reason, 0]
      if len(self.failures) <= REASONS_SHOWN:  # the cause, e.g. a prompt longer than the model's context
        self.log(f"llm: a request failed: {reason}")
    self.failures[kind][1] += 1

  def _failed_try(self, key: str, error: str) -> None:
    """Counts a failed try toward the dead-endpoint window; raises EndpointError once it is over."""
    self._last_error = error
    if self._failing_since is None:
      self._failing_since = time.monotonic()
    if len(self._failing_keys) < 2:
      self._failing_keys.add(key)
    self._check_down()

  def _check_down(self) -> None:
    if self.down is None and self._failing_since is not None and len(self._failing_keys) > 1:
      now = time.monotonic()
      failing_s = now - self._failing_since
      at_work = any(now - sent > min(5.0, self.give_up_after_s / 2) for sent in self._sending.values())
      if failing_s >= self.give_up_after_s and not at_work:
        self.down = (
          f"every request to {self.base_url} failed for {failing_s:.0f}s (--give_up_after="
          f"{self.give_up_after_s:g}), the last with: {self._last_error}; the answers received are "
          "kept: rerun the same command to resume"
        )
        self._down_event.set()
    if self.down:
      raise EndpointError(self.down)

  def _check_caps(self) -> None:
    if self.exhausted is None:
      if self.max_requests is not None and self.counts["sent"] >= self.max_requests:
        self.exhausted = f"--max_requests={self.max_requests}"
      elif self.max_tokens_total is not None and self.tokens_used() >= self.max_tokens_total:
        self.exhausted = f"--max_tokens_total={self.max_tokens_total} ({self.tokens_used()} tokens used)"
      if self.exhausted:
        self.log(
          f"llm: cap {self.exhausted} reached: requests on their way finish and are cached, "
          "no new request is sent; rerun with a higher cap to go on (nothing is paid twice)"
        )
    if self.exhausted:
      self.counts["not_sent"] += 1
      raise BudgetExhausted(self.exhausted)

  async def _fetch(self, request: Request) -> Answer:
    if self._semaphore is None:
      self._semaphore, self._down_event = asyncio.Semaphore(self.concurrency), asyncio.Event()
    last = None
    for attempt in range(self.max_attempts):
      async with self._semaphore:
        self._check_down()
        self._check_caps()
        self.counts["sent"] += 1
        try:
          response, text, usage = await self._send_tracked(request)
        except RequestFailed as error:
          self._failed_try(request.key, str(error))
          raise
        except _Retry as retry:
          last = retry
          self._failed_try(request.key, str(retry))
          if retry.no_connection and not self._reached:
            self._unreached += 1
            if self._unreached >= self.max_attempts:  # a typo in --base_url must not retry for minutes
              raise EndpointError(
                f"cannot connect to {self.base_url} ({retry.detail}): is the server up and --base_url right?"
              ) from None
        else:
          self._failing_since, self._failing_keys = None, set()
          self.cache.put(request, response, usage)  # committed before anyone uses it
          self.counts["paid"] += 1
          self.tokens["prompt_tokens_paid"] += usage["prompt_tokens"]
          self.tokens["completion_tokens_paid"] += usage["completion_tokens"]
          return Answer(request.key, text, response, usage, cached=False)
      self.retries[last.reason] += 1
      if attempt + 1 == self.max_attempts:
        break
      delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * random.uniform(0.5, 1.0)
      if last.retry_after is not None:
        delay = max(delay, last.retry_after)
      window_left = (self._failing_since or 0) + self.give_up_after_s - time.monotonic()
      if self._failing_since is not None and window_left > 0:  # wake when the window closes, to stop then
        delay = min(delay, window_left + 0.01)
      self._progress()
      try:  # the backoff, cut short when the endpoint is found dead
        await asyncio.wait_for(self._down_event.wait(), delay)
      except asyncio.TimeoutError:
        pass
    raise RequestFailed(f"gave up after {self.max_attempts} tries, the last: {last}")

  async def _send_tracked(self, request: Request) -> tuple[dict, str, dict]:
    self._sending[request.key] = time.monotonic()  # one try per key at a time: ask() joins identical requests
    try:
      return await self._send(request)
    finally:
      del self._sending[request.key]

  async def _send(self, request: Request) -> tuple[dict, str, dict]:
    body = dict(request.body)
    if request.endpoint == "chat":
      create = self.client.chat.completions.with_raw_response.create
      named = {"model": body.pop("model"), "messages": body.pop("messages")}
    else:
      create = self.client.completions.with_raw_response.create
      named = {"model": body.pop("model"), "prompt": body.pop("prompt")}
    try:
      raw = await create(**named, extra_body=body)
      raw_text = raw.text
    except openai.APITimeoutError:
      raise _Retry("timeout") from None
    except openai.APIConnectionError as error:
      # no connection made at all (refused, no such host), unlike one dropped mid-answer
      cause = _innermost(error)
      raise _Retry(
        "connection",
        detail=str(cause)[:120] or type(cause).__name__,
        no_connection=isinstance(cause, (ConnectionRefusedError, socket.gaierror)),
      ) from None
    except openai.APIStatusError as error:
      self._reached = True
      status = error.status_code
      said = re.sub(r"^Error code: \d+ - ", "", str(error.message))  # the client's prefix repeats the status
      message = f"HTTP {status} from {self.base_url}: {said[:200]}"
      if status in RETRY_STATUSES or status >= 500:
        raise _Retry(
          str(status), parse_retry_after(error.response.headers.get("retry-after")), detail=message
        ) from None
      if status in FATAL_STATUSES:
        raise EndpointError(message) from None
      raise RequestFailed(message) from None
    self._reached = True
    return parse_answer(request.endpoint, raw_text)

  def _account(self, answer: Answer) -> None:
    self.counts["answered"] += 1
    self.tokens["prompt_tokens_used"] += answer.usage["prompt_tokens"]
    self.tokens["completion_tokens_used"] += answer.usage["completion_tokens"]
    self._progress()

  def _progress(self, force: bool = False) -> None:
    now = time.monotonic()
    if not force and now - self._last_progress < self.progress_every_s:
      return
    self._last_progress = now
    elapsed = max(now - self.started, 1e-9)
    done = self.counts["answered"] + self.counts["failed"]
    rate = done / elapsed
    row = {
      "time": time.time(),
      "elapsed_s": round(elapsed, 3),
      "answers": self.counts["answered"],
      "paid": self.counts["paid"],
      "cached": self.counts["cached"],
      "failed": self.counts["failed"],
      "sent": self.counts["sent"],
      "retries": sum(self.retries.values()),
      "tokens_used": self.tokens_used(),
      "answers_per_s": round(rate, 3),
    }
    of_total, eta = "", ""
    if self.total:
      of_total = f"/{self.total}"
      if rate > 0:
        row["eta_s"] = round(max(self.total - done, 0) / rate, 1)
        eta = f", ETA {row['eta_s']:.0f}s"
    self.log(
      f"llm: {done}{of_total} done ({row['paid']} paid, {row['cached']} cached, {row['failed']} failed), "
      f"{rate:.2f}/s{eta}, {row['retries']} retries, {row['tokens_used']} tokens"
    )
    if self.metrics:
      self.metrics.write(json.dumps(row) + "\n")
      self.metrics.flush()


# ------------------------------------------------------------ command-line flags shared by stages


def add_args(parser: argparse.ArgumentParser, prefix: str = ""):
  """The flags every LLM-calling stage takes, in an argument group it returns. With a `prefix` (eval's
  "grader_") each flag is --{prefix}NAME, and --{prefix}base_url, --{prefix}model are optional."""
  group = parser.add_argument_group("LLM endpoint")

  def flag(name, **kw):
    group.add_argument(f"--{prefix}{name}", **kw)

  flag("base_url", required=not prefix, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
  flag("model", required=not prefix)
  flag("api_key_env", default="OPENAI_API_KEY", help="environment variable holding the key")
  flag("concurrency", type=int, default=8, help="requests in flight at once")
  flag("timeout", type=float, default=120.0, help="seconds per request before a retry")
  flag("max_attempts", type=int, default=8, help="tries per request")
  flag(
    "backoff_s",
    type=float,
    default=1.0,
    help="wait before the first retry, doubled each time up to 60 s (at least Retry-After)",
  )
  flag(
    "give_up_after",
    type=float,
    default=60.0,
    help="seconds of every request failing (a dead endpoint) after which the run stops",
  )
  flag("max_requests", type=int, default=None, help="cap on HTTP requests this run sends")
  flag(
    "max_tokens_total",
    type=int,
    default=None,
    help="cap on prompt + completion tokens of the answers used (cached ones included)",
  )
  flag("cache", default=None, help="SQLite request cache (default: OUT/llm_cache.sqlite)")
  return group


def check_args(args: argparse.Namespace, prefix: str = "") -> None:
  """Raises LLMError naming the first bad LLM flag (those of `add_args` with the same `prefix`)."""

  def value(name):
    return getattr(args, prefix + name)

  base_url = value("base_url")
  if urllib.parse.urlparse(base_url).scheme not in ("http", "https"):
    raise LLMError(f"--{prefix}base_url {base_url!r}: want an http:// or https:// URL")
  for name in ("concurrency", "max_attempts"):
    if value(name) < 1:
      raise LLMError(f"--{prefix}{name} must be >= 1, got {value(name)}")
  for name in ("timeout", "give_up_after"):
    if value(name) <= 0:
      raise LLMError(f"--{prefix}{name} must be > 0, got {value(name)}")
  if value("backoff_s") < 0:
    raise LLMError(f"--{prefix}backoff_s must be >= 0, got {value('backoff_s')}")
  for name in ("max_requests", "max_tokens_total"):
    if value(name) is not None and value(name) < 0:
      raise LLMError(f"--{prefix}{name} must be >= 0, got {value(name)}")
  _api_key(base_url, value("api_key_env"), f"--{prefix}base_url")


def from_args(args: argparse.Namespace, out_dir: str | os.PathLike, prefix: str = "", **kw) -> LLM:
  """An LLM client from `add_args` flags; cache and metrics under `out_dir` unless --cache says."""

  def value(name):
    return getattr(args, prefix + name)

  out_dir = Path(out_dir)
  return LLM(
    value("base_url"),
    cache_path=value("cache") or out_dir / "llm_cache.sqlite",
    api_key_env=value("api_key_env"),
    concurrency=value("concurrency"),
    timeout_s=value("timeout"),
    max_attempts=value("max_attempts"),
    backoff_base_s=value("backoff_s"),
    max_requests=value("max_requests"),
    max_tokens_total=value("max_tokens_total"),
    metrics_path=out_dir / "llm_metrics.jsonl",
    give_up_after_s=value("give_up_after"),
    **kw,
  )
