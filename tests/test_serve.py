"""`python -m phi1_jax.serve` as a user runs it: a real server subprocess on 127.0.0.1, driven with
the official `openai` client and raw HTTP, its answers checked against `phi1_jax.sample` and the
model's own forward pass. One server is shared by the module (its warm-up compiles every shape)."""

import concurrent.futures
import contextlib
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest

from helpers import REPO, repo_env, serve_process
from phi1_jax.inference import sampler as sample
from phi1_jax.inference.openai_api import CHAT_STOPS, chat_prompt
from phi1_jax.model import checkpoint

MAX_BATCH, MAX_QUEUE = 8, 24
SNIPPETS = Path(json.__file__).with_name("decoder.py").read_text().splitlines()


def request(method: str, url: str, body=None, timeout=60) -> tuple[int, dict]:
  """(status, JSON body) of one plain HTTP request; body is a dict (sent as JSON) or raw text."""
  host_port, path = url.removeprefix("http://").split("/", 1)
  conn = http.client.HTTPConnection(host_port, timeout=timeout)
  try:
    data = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    conn.request(method, "/" + path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())
  finally:
    conn.close()


class Server:
  def __init__(self, url, proc, log_path, name):
    self.url, self.proc, self.log_path, self.name = url, proc, log_path, name

  def health(self) -> dict:
    return request("GET", f"{self.url}/health")[1]

  def wait_idle(self, timeout=60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
      h = self.health()
      if h["running"] == 0 and h["waiting"] == 0:
        return h
      time.sleep(0.1)
    raise AssertionError(f"server still busy after {timeout}s: {self.health()}")

  def log(self) -> str:
    return self.log_path.read_text()


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
  log_path = tmp_path_factory.mktemp("serve") / "server.log"
  flags = (f"--max_batch={MAX_BATCH}", f"--max_queue={MAX_QUEUE}", "--log_every_s=1")
  with serve_process(tiny_checkpoint, log_path, *flags) as (url, proc):
    yield Server(url, proc, log_path, tiny_checkpoint.name)
    # nothing compiled after warm-up, whatever the tests sent
    assert request("GET", f"{url}/health")[1]["traces_after_warmup"] == 0


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
  """The same checkpoint loaded in this process: (model, tokenizer)."""
  return checkpoint.load_model_and_tokenizer(tiny_checkpoint)


def _prompts(n):
  """n prompts of 1 to about 90 tokens: runs of stdlib source lines."""
  return ["\n".join(SNIPPETS[10 + 7 * i : 10 + 7 * i + 1 + (i * 5) % 9]) if i else "x" for i in range(n)]


def _greedy_reference(reference, prompts, max_new):
  model, tok = reference
  rows = sample.generate(
    model, [tok.encode(p) for p in prompts], max_new_tokens=max_new, eos_id=tok.eos_id, vocab_limit=tok.vocab_size
  )
  return rows


def test_health_and_models(server, client):
  status, h = request("GET", f"{server.url}/health")
  assert status == 200 and h["status"] == "ok" and h["max_batch"] == MAX_BATCH
  assert [m.id for m in client.models.list().data] == [server.name]


def test_concurrent_greedy_requests_equal_sample_generate(server, client, reference):
  """20 requests (more than the 8 slots: later ones join as others finish), different prompt
  lengths and max_tokens, each equal to phi1_jax.inference.sampler.generate's greedy tokens."""
  prompts = _prompts(20)
  max_tokens = [8 + (i * 7) % 17 for i in range(len(prompts))]
  ref = _greedy_reference(reference, prompts, max(max_tokens))
  tok = reference[1]
  lengths = [len(tok.encode(p)) for p in prompts]
  assert min(lengths) == 1 and max(lengths) > 64  # the smallest and the largest prompt bucket

  def ask(i):
    return client.completions.create(model=server.name, prompt=prompts[i], max_tokens=max_tokens[i], temperature=0)

  # one response first: the openai client's pydantic types build on first use, and 20 threads
  # building them at once can fail ("BaseModel cannot be instantiated directly", pydantic#11849)
  ask(0)
  with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
    answers = list(pool.map(ask, range(len(prompts))))
  for i, a in enumerate(answers):
    want = ref[i][: max_tokens[i]]
    assert a.choices[0].text == tok.decode(want), i
    assert a.usage.prompt_tokens == lengths[i]
    if len(want) < max_tokens[i]:  # generate stopped at eos
      assert a.choices[0].finish_reason == "stop" and a.usage.completion_tokens == len(want) + 1
    else:
      assert a.choices[0].finish_reason == "length" and a.usage.completion_tokens == max_tokens[i]
  solo = ask(3)  # alone in the batch: the same answer
  assert solo.choices[0].text == answers[3].choices[0].text


def test_stream_equals_whole_and_seeded_sampling_repeats(server, client):
  kw = dict(model=server.name, prompt=_prompts(5)[4], max_tokens=20, temperature=0.9, top_p=0.95, seed=11)
  whole = client.completions.create(**kw)
  chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
  text = "".join(c.choices[0].text for c in chunks if c.choices)
  assert text == whole.choices[0].text
  finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
  assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # usage chunk last
  assert client.completions.create(**{**kw, "seed": 12}).choices[0].text != text


def test_n_choices(server, client):
  kw = dict(model=server.name, prompt=["def f(x):", "import os"], max_tokens=12, temperature=1.0)
  many = client.completions.create(n=3, seed=5, **kw)
  assert [c.index for c in many.choices] == list(range(6))
  texts = [c.text for c in many.choices]
  assert len(set(texts[:3])) > 1  # three different draws of prompt 0
  one = client.completions.create(n=1, seed=5, **kw)  # choice 0 of a prompt draws with the request's seed
  assert [c.text for c in one.choices] == [texts[0], texts[3]]
  assert many.usage.prompt_tokens == one.usage.prompt_tokens


def test_stop_strings(server, client, reference):
  prompt = _prompts(8)[7]
  full = client.completions.create(model=server.name, prompt=prompt, max_tokens=30, temperature=0).choices[0].text
  start = next(j for j in range(4, len(full) - 3) if "\ufffd" not in full[j : j + 3] and full[j : j + 3].strip())
  stop = full[start : start + 3]
  want = full[: full.find(stop)]
  for kw in (dict(stop=stop), dict(stop=["never-there", stop])):
    got = client.completions.create(model=server.name, prompt=prompt, max_tokens=30, temperature=0, **kw)
    assert got.choices[0].text == want and got.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
      model=server.name, prompt=prompt, max_tokens=30, temperature=0, stream=True, **kw
    )
    assert "".join(c.choices[0].text for c in streamed) == want  # a partial stop string is never sent


def test_echo_logprobs_equal_forward_pass(server, client, reference):
  """lm-evaluation-harness's loglikelihood request: echo=true, logprobs=1, token-id prompts."""
  model, tok = reference
  ids = tok.encode(_prompts(6)[5])
  logits_LxV = model(jnp.asarray([ids]))[0].astype(jnp.float32)
  logp_LxV = np.asarray(jax.nn.log_softmax(logits_LxV, axis=-1))
  # The server prefills the prompt right-padded to its bucket (67 tokens -> 128), this forward pass
  # runs it unpadded: XLA's CPU kernels round differently at other shapes (the server's numbers
  # equal this forward pass padded to 128 bit for bit). Measured on this model, 57 random prompts
  # of 2-506 tokens: up to 33 float32 eps of the largest |logit| (6.9e-5 at |logit| ~ 20; the CI
  # failure: 2.6e-5). 100 eps leaves 3x room; a wrong position or token is off by about 1.
  tol = dict(atol=100 * np.finfo(np.float32).eps * float(jnp.abs(logits_LxV).max()), rtol=0)
  for max_tokens in (0, 1):
    a = client.completions.create(
      model=server.name, prompt=ids, max_tokens=max_tokens, temperature=0, echo=True, logprobs=1
    )
    lp = a.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + max_tokens
    want = [logp_LxV[j - 1, ids[j]] for j in range(1, len(ids))]
    np.testing.assert_allclose(lp.token_logprobs[1 : len(ids)], want, **tol)
    tops = [max(d.values()) for d in lp.top_logprobs[1 : len(ids)]]
    np.testing.assert_allclose(tops, logp_LxV[: len(ids) - 1].max(-1), **tol)
    assert a.choices[0].text.startswith(tok.decode(ids))
    if max_tokens:  # the greedy token: the forward's argmax at the last position, with its log-prob
      np.testing.assert_allclose(lp.token_logprobs[-1], logp_LxV[-1].max(), **tol)
      assert lp.tokens[-1] == tok.decode([int(logp_LxV[-1].argmax())])
  # the same shapes whatever else runs: among other requests, the same log-probs bit for bit
  kw = dict(model=server.name, prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    others = [
      pool.submit(client.completions.create, model=server.name, prompt=p, max_tokens=30, temperature=0.5, logprobs=2)
      for p in _prompts(7)
    ]
    crowded = pool.submit(client.completions.create, **kw)
    [o.result() for o in others]
  crowded_lp = crowded.result().choices[0].logprobs.token_logprobs
  assert crowded_lp[: len(ids)] == lp.token_logprobs[: len(ids)]  # the prefill: batch 1, the prompt's own bucket
  # the new token comes from the decode step, where the row's keys sit at other cache columns (the
  # step count mod S) after other requests' steps: the softmax over them rounds differently
  np.testing.assert_allclose(crowded_lp[-1], lp.token_logprobs[-1], **tol)


def test_chat(server, client, reference):
  messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "def add(a, b):"}]
  chat = client.chat.completions.create(model=server.name, messages=messages, max_tokens=16, temperature=0)
  plain = client.completions.create(
    model=server.name, prompt=chat_prompt(messages), max_tokens=16, temperature=0, stop=list(CHAT_STOPS)
  )
  assert chat.choices[0].message.role == "assistant"
  assert chat.choices[0].message.content == plain.choices[0].text
  streamed = client.chat.completions.create(
    model=server.name, messages=messages, max_tokens=16, temperature=0, stream=True
  )
  assert "".join(c.choices[0].delta.content or "" for c in streamed) == plain.choices[0].text
  lp = (
    client.chat.completions.create(
      model=server.name, messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2
    )
    .choices[0]
    .logprobs
  )
  assert len(lp.content) >= 1 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp.content)


@pytest.mark.parametrize(
  "body, status, param",
  [
    ({"max_tokens": 4}, 400, "prompt"),  # missing prompt
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": "8"}, 400, "max_tokens"),  # a string where a number goes
    ({"prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "temperature": float("nan")}, 400, "temperature"),  # json.loads reads NaN: not 200, empty
    ({"prompt": "x", "temperature": float("inf")}, 400, "temperature"),
    ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "x", "top_p": float("nan")}, 400, "top_p"),
    ({"prompt": "x", "max_tokens": float("inf")}, 400, "max_tokens"),
    ({"prompt": "x", "n": float("nan")}, 400, "n"),
    ({"prompt": "x", "logprobs": float("-inf")}, 400, "logprobs"),
    ({"prompt": "x", "n": MAX_BATCH + MAX_QUEUE + 1}, 400, "n"),
    ({"prompt": ["x"] * (MAX_BATCH + MAX_QUEUE + 1)}, 400, "prompt"),
    ({"prompt": [5, 99999]}, 400, "prompt"),  # a token id past the vocabulary
    ({"prompt": "x " * 600}, 400, "prompt"),  # longer than the context
    ({"prompt": "x", "max_tokens": 600}, 400, "max_tokens"),  # prompt + completion past the context
    ({"prompt": "x", "logit_bias": {"5": 1}}, 400, "logit_bias"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ("{not json", 400, None),
  ],
)
def test_bad_requests_get_openai_errors(server, body, status, param):
  got, answer = request("POST", f"{server.url}/v1/completions", body)
  assert got == status, answer
  error = answer["error"]
  assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["param"] == param
  assert request("POST", f"{server.url}/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200  # still serving


def test_requests_that_never_fit_are_400_not_retried_429(server):
  """More sequences than --max_batch + --max_queue can never be served: a 429 would have the client
  retry forever, so the real openai client (which retries 429s) gets a 400 naming the limit at once."""
  retrying = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=5, timeout=60)
  start = time.time()
  with pytest.raises(openai.BadRequestError) as refused:
    retrying.completions.create(model=server.name, prompt=["x", "y", "z"], n=11, max_tokens=2)  # 33 > 8 + 24
  assert "33 sequences" in str(refused.value) and f"the {MAX_BATCH + MAX_QUEUE} this server ever holds" in str(
    refused.value
  )
  assert time.time() - start < 5  # no retry (the first would wait about a second)
  fits = retrying.completions.create(model=server.name, prompt=["x", "y"], n=16, max_tokens=2)  # 32: the most
  assert len(fits.choices) == MAX_BATCH + MAX_QUEUE


def test_bad_chat_request_and_unknown_route(server):
  status, answer = request(
    "POST", f"{server.url}/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}
  )
  assert status == 400 and answer["error"]["param"] == "messages"
  status, answer = request("GET", f"{server.url}/v1/nothing")
  assert status == 404 and set(answer["error"]) == {"message", "type", "param", "code"}


def test_full_queue_429_and_disconnects_free_slots(server, client):
  before = server.wait_idle()["tokens_generated"]
  # every slot and queue place taken by one long streaming request (32 x 500 tokens: seconds) ...
  body = {"prompt": "x", "max_tokens": 500, "n": MAX_BATCH + MAX_QUEUE, "temperature": 0, "stream": True}
  conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
  conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
  stream = conn.getresponse()
  assert stream.status == 200 and stream.readline().startswith(b"data: ")
  status, busy = request("POST", f"{server.url}/v1/completions", {"prompt": "x", "max_tokens": 2})
  assert status == 429 and busy["error"]["code"] == "rate_limit_exceeded", busy
  with pytest.raises(openai.RateLimitError):
    client.completions.create(model=server.name, prompt="x", max_tokens=2)
  # ... whose client then hangs up: its 32 sequences leave the slots and the queue
  conn.close()
  server.wait_idle(timeout=30)
  # a non-streaming client that hangs up is noticed too
  with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as s:
    payload = json.dumps({"prompt": "x", "max_tokens": 500, "n": MAX_BATCH + MAX_QUEUE, "temperature": 0}).encode()
    s.sendall(
      b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    deadline = time.time() + 30
    while server.health()["running"] == 0 and time.time() < deadline:
      time.sleep(0.05)
  server.wait_idle(timeout=30)
  generated = server.health()["tokens_generated"] - before
  assert generated < (MAX_BATCH + MAX_QUEUE) * 500  # both together stopped before one would have ended
  assert "client gone (stream)" in server.log() and re.search(r"client gone\n", server.log())
  ok = client.completions.create(model=server.name, prompt="x", max_tokens=2)
  assert ok.choices[0].finish_reason in ("length", "stop")


def test_request_and_load_log_lines(server, client):
  client.completions.create(model=server.name, prompt="x", max_tokens=3)
  log = server.log()
  assert re.search(r"cmpl-\w+: 1 prompt tokens, 3 completion tokens, queue [\d.]+s, total [\d.]+s, ok", log)
  deadline = time.time() + 15  # the load line comes at the engine's next --log_every_s tick
  while not re.search(r"slots \d+/8 running, \d+ waiting, [\d.]+ tokens/s", log) and time.time() < deadline:
    time.sleep(0.2)
    log = server.log()
  assert re.search(r"slots \d+/8 running, \d+ waiting, [\d.]+ tokens/s", log)


def test_startup_errors_are_one_line(tiny_checkpoint, tmp_path):
  """A bad checkpoint path, a port in use, a checkpoint without a tokenizer, a bad flag: one line, exit 2."""
  no_tok = tmp_path / "no_tokenizer"
  shutil.copytree(tiny_checkpoint, no_tok, ignore=shutil.ignore_patterns("tokenizer.model"))
  taken = socket.socket()
  taken.bind(("127.0.0.1", 0))
  taken.listen()
  port = taken.getsockname()[1]
  cases = {
    "not found": [f"--checkpoint={tmp_path / 'nope'}"],
    "in use": [f"--checkpoint={tiny_checkpoint}", f"--port={port}"],
    "no tokenizer.model or tokenizer.json": [f"--checkpoint={no_tok}"],
    "--max_batch=0": [f"--checkpoint={tiny_checkpoint}", "--max_batch=0"],
    "unrecognized arguments: --checkpont=": [f"--checkpont={tiny_checkpoint}"],  # misspelt: named, not "required"
  }
  env = repo_env()
  procs = {
    named: subprocess.Popen(
      [sys.executable, "-m", "phi1_jax.serve", *args],
      cwd=REPO,
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
    )
    for named, args in cases.items()
  }
  try:
    for named, proc in procs.items():
      out, err = proc.communicate(timeout=120)
      assert proc.returncode == 2, (named, err)
      assert len(err.strip().splitlines()) == 1 and named in err and "Traceback" not in err, err
  finally:
    taken.close()


@pytest.mark.slow
def test_signals_end_the_server_cleanly(tiny_checkpoint, tmp_path):
  """SIGINT while the shapes compile, SIGTERM with a stream in flight: uvicorn's own exit (0 for
  SIGINT, killed by SIGTERM), within seconds, no traceback or abort, no process left behind."""
  from phi1_jax.cli import descendants

  for sig, when, code in ((signal.SIGINT, "compiling", 0), (signal.SIGTERM, "streaming", -signal.SIGTERM)):
    env, argv = (
      repo_env(),
      [f"--checkpoint={tiny_checkpoint}", "--port=0", "--max_batch=2"],
    )
    if when == "compiling":  # no compilation cache: seconds of compiling to be stopped in
      env.pop("JAX_COMPILATION_CACHE_DIR", None)
      argv.append("--compile_cache=")
    log_path = tmp_path / f"{when}.log"
    with open(log_path, "w") as log_file:
      proc = subprocess.Popen(
        [sys.executable, "-m", "phi1_jax.serve", *argv], cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT
      )
    try:
      deadline, health = time.time() + 120, None
      while health != (503 if when == "compiling" else 200):  # uvicorn answers (and handles signals)
        assert proc.poll() is None and time.time() < deadline, log_path.read_text()
        time.sleep(0.1)
        found = re.search(r"http://127\.0\.0\.1:\d+", log_path.read_text())
        with contextlib.suppress(OSError):
          health = found and request("GET", f"{found.group(0)}/health", timeout=5)[0]
      stream = None
      if when == "streaming":
        stream = http.client.HTTPConnection(found.group(0).removeprefix("http://"), timeout=60)
        stream.request(
          "POST",
          "/v1/completions",
          json.dumps({"prompt": "x", "max_tokens": 500, "stream": True}),
          {"Content-Type": "application/json"},
        )
        assert stream.getresponse().status == 200
      children = descendants(proc.pid)
      proc.send_signal(sig)
      assert proc.wait(timeout=30) == code, log_path.read_text()
    finally:
      proc.kill()
    log = log_path.read_text()
    assert not re.search(r"Traceback|terminate called|FATAL", log), log
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    if stream is not None:
      stream.close()
