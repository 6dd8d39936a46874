"""A deliberately misbehaving OpenAI-compatible server for tests: real HTTP on 127.0.0.1.

    with FaultyLLMServer(faults=["429", "drop"], fault_rate=0.2) as server:
      server.base_url          # http://127.0.0.1:PORT/v1
      server.paid_keys()       # Counter of request bodies answered with a good 200

Serves POST /v1/chat/completions and /v1/completions. Each request first takes the next fault
from `faults` (a script, in order), else one at random with probability `fault_rate` (from
`fault_kinds`, seeded), unless `fault_for(endpoint, body)` names one for that request, else gets a good answer: `responder(endpoint, body)` -> text, after
`delay_s`. Faults:
  "429"        429 with Retry-After: `retry_after`
  "500", "503" a server error (503 also with Retry-After)
  "400", "401", "404"  client errors (not to be retried); "400:MESSAGE" says MESSAGE as a server would
  "drop"       a 200 whose body stops half way (Content-Length promises more), connection closed
  "reset"      the connection closed before any answer
  "garbage"    a 200 with an HTML body
  "no_choices" a 200 with JSON that is not a completion
  "slow"       a good answer after `slow_s` seconds (past the client's timeout)
Every request is logged (`log`: endpoint, body, outcome); `paid` lists the bodies answered well.
`die()` is the server going away: new connections are refused, open ones are closed unanswered.

Run by hand (an endpoint for demos): python tests/llm_servers.py --port 8123 [--fault_rate 0.2]
[--responder textbook]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.server
import json
import random
import threading
import time

ALL_FAULTS = ("429", "500", "503", "drop", "reset", "garbage", "no_choices", "slow")
RETRYABLE_FAULTS = ("429", "500", "503", "drop", "reset", "garbage", "no_choices")


def canonical(body: dict) -> str:
  return json.dumps(body, sort_keys=True, separators=(",", ":"))


def echo_responder(endpoint: str, body: dict) -> str:
  """A deterministic answer naming the request (so tests can tell answers apart)."""
  return f"answer {hashlib.sha256(canonical(body).encode()).hexdigest()[:16]}"


def prompt_text(endpoint: str, body: dict) -> str:
  if endpoint == "chat":
    return "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
  return str(body.get("prompt", ""))


class _QuietServer(http.server.ThreadingHTTPServer):
  daemon_threads = True

  def handle_error(self, request, client_address):
    pass  # clients that hang up (timeouts, SIGKILL) are part of the tests


class FaultyLLMServer:
  def __init__(
    self,
    responder=echo_responder,
    faults=(),
    fault_rate: float = 0.0,
    fault_kinds=RETRYABLE_FAULTS,
    seed: int = 0,
    delay_s: float = 0.0,
    slow_s: float = 3.0,
    retry_after: str = "1",
    port: int = 0,
    fault_for=None,
  ):
    self.fault_for = fault_for
    self.responder, self.fault_rate, self.fault_kinds = responder, fault_rate, tuple(fault_kinds)
    self.script = collections.deque(faults)
    self.rng = random.Random(seed)
    self.delay_s, self.slow_s, self.retry_after = delay_s, slow_s, retry_after
    self.lock = threading.Lock()
    self.log: list[dict] = []
    self.paid: list[tuple[str, str]] = []  # (endpoint, canonical body) of each good answer sent
    self.httpd = _QuietServer(("127.0.0.1", port), self._handler_class())
    self.thread = None
    self.dead = False

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def start(self) -> "FaultyLLMServer":
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()
    return self

  def stop(self) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()

  def die(self) -> None:
    self.dead = True  # kept-alive connections are closed at their next request
    self.stop()

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def add_faults(self, *faults: str) -> None:
    with self.lock:
      self.script.extend(faults)

  def outcomes(self) -> collections.Counter:
    with self.lock:
      return collections.Counter(entry["outcome"] for entry in self.log)

  def paid_keys(self) -> collections.Counter:
    with self.lock:
      return collections.Counter(self.paid)

  def _next_fault(self, endpoint: str, body: dict) -> str | None:
    if self.fault_for is not None and self.fault_for(endpoint, body):
      return self.fault_for(endpoint, body)
    with self.lock:
      if self.script:
        return self.script.popleft()
      if self.fault_rate and self.rng.random() < self.fault_rate:
        return self.rng.choice(self.fault_kinds)
    return None

  def _handler_class(self):
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        pass

      def _send(self, status: int, payload: bytes, content_type="application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
          self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

      def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        endpoint = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}.get(self.path)
        try:
          body = json.loads(raw)
        except ValueError:
          body = None
        if endpoint is None or not isinstance(body, dict):
          self._send(404 if endpoint is None else 400, b'{"error": {"message": "bad request"}}')
          return
        if server.dead:
          self.close_connection = True
          self.connection.close()
          return
        fault = server._next_fault(endpoint, body)
        entry = {"endpoint": endpoint, "body": body, "outcome": fault or "ok", "time": time.time()}
        with server.lock:
          server.log.append(entry)
        fault, _, message = (fault or "").partition(":")
        fault = fault or None
        error = json.dumps({"error": {"message": message or f"deliberate {fault}"}}).encode()
        if fault in ("429", "503"):
          self._send(int(fault), error, headers={"Retry-After": server.retry_after})
        elif fault in ("500", "400", "401", "404"):
          self._send(int(fault), error)
        elif fault == "garbage":
          self._send(200, b"<html><body>502 Bad Gateway (but sent as 200)</body></html>", "text/html")
        elif fault == "no_choices":
          self._send(200, b'{"object": "error", "detail": "upstream overloaded"}')
        elif fault == "reset":
          self.close_connection = True
          self.connection.close()
        elif fault == "drop":
          payload = self._answer(endpoint, body)
          self.send_response(200)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload[: len(payload) // 2])
          self.wfile.flush()
          self.close_connection = True
          self.connection.close()
        else:
          time.sleep(server.slow_s if fault == "slow" else server.delay_s)
          payload = self._answer(endpoint, body)
          try:
            self._send(200, payload)
          except OSError:  # the client gave up (timeout): not delivered
            entry["outcome"] = f"{fault or 'ok'} undelivered"
            return
          if fault is None:
            with server.lock:
              server.paid.append((endpoint, canonical(body)))

      def _answer(self, endpoint: str, body: dict) -> bytes:
        text = server.responder(endpoint, body)
        prompt_tokens = max(1, len(prompt_text(endpoint, body)) // 4)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if endpoint == "chat":
          choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
          kind = "chat.completion"
        else:
          choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}
          kind = "text_completion"
        answer = {
          "id": "cmpl-test",
          "object": kind,
          "created": int(time.time()),
          "model": body.get("model"),
          "choices": [choice],
          "usage": usage,
        }
        return json.dumps(answer).encode()

    return Handler


def main():
  parser = argparse.ArgumentParser(description="A misbehaving OpenAI-compatible server on 127.0.0.1")
  parser.add_argument("--port", type=int, default=8123)
  parser.add_argument("--fault_rate", type=float, default=0.0)
  parser.add_argument("--delay_s", type=float, default=0.0)
  parser.add_argument("--responder", default="echo", choices=["echo", "textbook", "exercise"])
  args = parser.parse_args()
  responder = echo_responder
  if args.responder != "echo":
    from synth_responders import exercise_responder, textbook_responder

    responder = textbook_responder if args.responder == "textbook" else exercise_responder
  server = FaultyLLMServer(responder=responder, fault_rate=args.fault_rate, delay_s=args.delay_s, port=args.port)
  print(f"serving {server.base_url}", flush=True)
  server.httpd.serve_forever()


if __name__ == "__main__":
  main()
