"""An OpenAI-compatible HTTP server with continuous batching for any phi1_jax or Phi checkpoint.

  python -m phi1_jax.serve --checkpoint=CKPT [--host=127.0.0.1] [--port=8000] [--model_name=NAME]
      [--max_batch=16] [--max_queue=256] [--max_seq_len=N] [--dtype=float32|bfloat16] [--tokenizer=PATH]

CKPT is anything `phi1_jax.model.checkpoint.resolve` takes (trainer workdir or step folder, converter
output, transformers folder); the tokenizer is the one kept with it (`Checkpoint.tokenizer_file`).
Endpoints: GET /health (503 while the shapes compile, then 200 with slot and queue counts),
GET /v1/models, POST /v1/completions, POST /v1/chat/completions (`stream=true` for server-sent
events). The HTTP stack is FastAPI on uvicorn; the batching is `phi1_jax.inference.engine` (a thread);
request checks and response shapes are `phi1_jax.inference.openai_api`.

--port=0 takes a free port; the line `serving MODEL on http://HOST:PORT` names it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException


log = logging.getLogger("phi1_jax.serve")
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request checks that its client is still there


def build_app(engine, tokenizer, model_name: str, max_seq_len: int):
  """The FastAPI app over a started Engine."""
  from phi1_jax.inference import engine as engine_lib
  from phi1_jax.inference import openai_api as api

  app = FastAPI(title="phi1_jax", docs_url=None, redoc_url=None)
  created = int(time.time())

  def error_response(e: api.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)

  @app.exception_handler(HTTPException)
  async def http_error(_, exc: HTTPException):  # unknown routes, wrong methods: also in the OpenAI shape
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(api.ApiError(exc.status_code, str(exc.detail), type_=kind))

  @app.exception_handler(RequestValidationError)
  async def validation_error(_, exc):
    return error_response(api.ApiError(400, str(exc)))

  @app.get("/health")
  async def health():
    stats = engine.stats()
    if engine.ready:
      return {"status": "ok", **stats}
    return JSONResponse({"status": "error" if engine.failed else "loading", **stats}, status_code=503)

  @app.get("/v1/models")
  async def models():
    return {
      "object": "list",
      "data": [
        {"id": model_name, "object": "model", "created": created, "owned_by": "phi1_jax", "max_model_len": max_seq_len}
      ],
    }

  async def read_request(request: Request, chat: bool) -> api.Request:
    raw = await request.body()
    try:
      body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
      raise api.ApiError(400, f"the request body is not valid JSON ({e})") from None
    if isinstance(body, dict) and body.get("model") not in (None, model_name):
      raise api.ApiError(
        404,
        f"the model {body['model']!r} does not exist; this server serves {model_name!r}",
        "model",
        "model_not_found",
        "not_found_error",
      )
    return api.parse(
      body, tokenizer, chat=chat, max_seq_len=max_seq_len, max_sequences=engine.max_queue + engine.max_batch
    )

  async def handle(request: Request, chat: bool):
    try:
      req = await read_request(request, chat)
      if not engine.ready:
        raise api.ApiError(
          503, "the model is still loading; retry when GET /health answers 200", type_="server_error", code="not_ready"
        )
    except api.ApiError as e:
      return error_response(e)
    mailbox = _Mailbox(asyncio.get_running_loop(), len(req.prompts) * req.n, wake_each_step=req.stream)
    seqs = []
    for prompt in req.prompts:
      for j in range(req.n):
        params = dataclasses.replace(req.params, seed=api.choice_seed(req, j) % 2**32)
        seqs.append(engine_lib.Sequence(prompt, params, functools.partial(mailbox.put, len(seqs))))
    try:
      engine.submit(seqs)
    except engine_lib.QueueFull as e:
      return error_response(
        api.ApiError(429, f"the server is busy: {e}; retry later", type_="rate_limit_error", code="rate_limit_exceeded")
      )
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    reply = _Reply(rid, req, seqs, tokenizer, model_name)
    if req.stream:
      return StreamingResponse(reply.stream(mailbox, engine), media_type="text/event-stream")
    return await reply.whole(mailbox, engine, request)

  @app.post("/v1/completions")
  async def completions(request: Request):
    return await handle(request, chat=False)

  @app.post("/v1/chat/completions")
  async def chat_completions(request: Request):
    return await handle(request, chat=True)

  return app


ENGINE_FAILED = {
  "error": {
    "message": "the model failed while generating (see the server's log); the server answers 503 until it is restarted",
    "type": "server_error",
    "param": None,
    "code": "engine_failed",
  }
}


class _Mailbox:
  """Deltas from the engine thread to one request on the event loop. The engine appends without
  the loop; the loop is woken at most once per batch of deltas (streaming) or once when every
  choice has finished (a whole response), so 32 running requests do not cost 32 wake-ups a step."""

  def __init__(self, loop, n_choices: int, wake_each_step: bool):
    self.loop, self.left, self.wake_each_step = loop, n_choices, wake_each_step
    self.items: collections.deque = collections.deque()
    self.ready = asyncio.Event()
    self.scheduled = False

  def put(self, i, delta) -> None:  # engine thread
    self.items.append((i, delta))
    if delta.finish_reason:
      self.left -= 1
    if (self.wake_each_step or self.left == 0) and not self.scheduled:
      self.scheduled = True
      try:
        self.loop.call_soon_threadsafe(self._wake)
      except RuntimeError:  # the loop is closed: the server is shutting down
        pass

  def _wake(self) -> None:
    self.scheduled = False
    self.ready.set()

  async def take(self, timeout: float | None = None) -> list:
    """What arrived since the last call (empty after `timeout` seconds with nothing)."""
    try:
      await asyncio.wait_for(self.ready.wait(), timeout)
    except asyncio.TimeoutError:
      return []
    self.ready.clear()
    items = []
    while self.items:
      items.append(self.items.popleft())
    return items


class _Reply:
  """Gathers one request's sequences into OpenAI responses (whole, or as server-sent events)."""

  def __init__(self, rid, req, seqs, tokenizer, model_name):
    from phi1_jax.inference import openai_api as api

    self.api, self.rid, self.req, self.seqs, self.tok, self.model = api, rid, req, seqs, tokenizer, model_name
    self.created = int(time.time())
    self.texts = ["" for _ in seqs]
    self.tokens = [[] for _ in seqs]
    self.finish = [None for _ in seqs]
    self.t_start = min(s.t_submit for s in seqs)

  def prompt_of(self, i) -> int:
    return i // self.req.n

  def _log(self, outcome: str) -> None:
    started = [s.t_start for s in self.seqs if s.t_start is not None]
    queue_s = max(started) - self.t_start if len(started) == len(self.seqs) else time.perf_counter() - self.t_start
    log.info(
      "%s: %d prompt tokens, %d completion tokens, queue %.3fs, total %.3fs, %s",
      self.rid,
      sum(len(p) for p in self.req.prompts),
      sum(s.n_generated for s in self.seqs),
      queue_s,
      time.perf_counter() - self.t_start,
      outcome,
    )

  def _usage(self) -> dict:
    return self.api.usage(sum(len(p) for p in self.req.prompts), sum(s.n_generated for s in self.seqs))

  def _take(self, i, delta) -> None:
    self.texts[i] += delta.text
    self.tokens[i].extend(delta.tokens)
    if delta.finish_reason:
      self.finish[i] = delta.finish_reason

  def _echo_text(self, i) -> str:
    return self.req.prompt_texts[self.prompt_of(i)] if self.req.echo else ""

  def _logprobs(self, i, tokens, offset):
    if self.req.params.logprobs is None:
      return None
    if self.req.chat:
      return self.api.chat_logprobs(tokens, self.tok)
    return self.api.completion_logprobs(tokens, self.tok, offset)

  async def whole(self, mailbox, engine, request):
    """Waits for every choice (cancelling them if the client goes away), then one JSON response."""
    try:
      while None in self.finish:
        for item in await mailbox.take(DISCONNECT_POLL_S):
          self._take(*item)
        if None in self.finish and await request.is_disconnected():
          engine.cancel(self.seqs)
          self._log("client gone")
          return JSONResponse({}, status_code=499)
    except asyncio.CancelledError:
      engine.cancel(self.seqs)
      self._log("cancelled")
      raise
    if "error" in self.finish:
      self._log("engine failed")
      return JSONResponse(ENGINE_FAILED, status_code=500)
    choices = []
    for i in range(len(self.seqs)):
      if self.req.chat:
        choices.append(
          {
            "index": i,
            "message": {"role": "assistant", "content": self.texts[i]},
            "logprobs": self._logprobs(i, self.tokens[i], 0),
            "finish_reason": self.finish[i],
          }
        )
      else:
        echo = self._echo_text(i)
        # with echo, text offsets count from the prompt's start; else from the completion's
        choices.append(
          {
            "index": i,
            "text": echo + self.texts[i],
            "logprobs": self._logprobs(i, self.tokens[i], 0),
            "finish_reason": self.finish[i],
          }
        )
    self._log("ok")
    return {
      "id": self.rid,
      "object": "chat.completion" if self.req.chat else "text_completion",
      "created": self.created,
      "model": self.model,
      "choices": choices,
      "usage": self._usage(),
    }

  def _chunk(self, choices, usage=None) -> str:
    body = {
      "id": self.rid,
      "object": "chat.completion.chunk" if self.req.chat else "text_completion",
      "created": self.created,
      "model": self.model,
      "choices": choices,
    }
    if usage is not None or self.req.include_usage:
      body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n"

  async def stream(self, mailbox, engine):
    """Server-sent events: one chunk per delta, the finish reason in each choice's last chunk,
    usage (with stream_options.include_usage), then `data: [DONE]`. A client that goes away
    cancels the request (Starlette cancels this generator), which frees its slots."""
    offsets = [0] * len(self.seqs)
    echoed = [False] * len(self.seqs)
    try:
      if self.req.chat:
        yield self._chunk(
          [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for i in range(len(self.seqs))
          ]
        )
      while None in self.finish:
        for i, delta in await mailbox.take():
          self._take(i, delta)
          if delta.finish_reason == "error":
            yield f"data: {json.dumps(ENGINE_FAILED)}\n\n"
            self.finish = ["error"] * len(self.seqs)
            break
          yield self._delta_chunk(i, delta, offsets, echoed)
      if self.req.include_usage:
        yield self._chunk([], self._usage())
      yield "data: [DONE]\n\n"
      self._log("ok (stream)")
    except (asyncio.CancelledError, GeneratorExit):
      engine.cancel(self.seqs)
      self._log("client gone (stream)")
      raise

  def _delta_chunk(self, i, delta, offsets, echoed) -> str:
    text = delta.text
    if not echoed[i]:  # the echoed prompt goes with a choice's first chunk (with its log-probs, if asked)
      text, echoed[i] = self._echo_text(i) + text, True
    logprobs = self._logprobs(i, delta.tokens, offsets[i])
    offsets[i] += sum(len(self.tok.decode([t.id])) for t in delta.tokens)
    if self.req.chat:
      choice = {
        "index": i,
        "delta": {"content": text} if text else {},
        "logprobs": logprobs,
        "finish_reason": delta.finish_reason,
      }
    else:
      choice = {"index": i, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason}
    return self._chunk([choice])
