"""phi1_jax.stages.llm against a real, deliberately misbehaving HTTP endpoint on 127.0.0.1."""

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
import types

import pytest

from phi1_jax.stages import llm as llm_lib
from helpers import REPO, free_port, repo_env
from llm_servers import FaultyLLMServer, canonical, echo_responder


def _requests(n, tag="q"):
  return [
    llm_lib.chat_request("test-model", [{"role": "user", "content": f"{tag} {i}"}], seed=i, max_tokens=16)
    for i in range(n)
  ]


def _ask_all(server, tmp_path, requests, **kw):
  """Answers (or the exception) for each request, and the client's summary."""

  async def go():
    kw.setdefault("backoff_base_s", 0.01)
    client = llm_lib.LLM(
      server.base_url,
      cache_path=tmp_path / "cache.sqlite",
      progress_every_s=0,
      metrics_path=tmp_path / "metrics.jsonl",
      total=len(requests),
      **kw,
    )

    async def one(request):
      try:
        return await client.ask(request)
      except llm_lib.LLMError as error:
        return error

    results = await asyncio.gather(*(one(r) for r in requests))
    await client.aclose()
    return results, client.summary()

  return asyncio.run(go())


@pytest.fixture
def server():
  with FaultyLLMServer() as s:
    yield s


def test_every_fault_is_retried_and_the_answer_is_paid_once(server, tmp_path):
  server.add_faults("429", "500", "503", "drop", "reset", "garbage", "no_choices")
  start = time.monotonic()
  (answer,), summary = _ask_all(server, tmp_path, _requests(1), concurrency=1)
  request = _requests(1)[0]
  assert answer.text == echo_responder("chat", request.body) and not answer.cached
  assert answer.usage["completion_tokens"] > 0
  assert summary["retries"] == {"429": 1, "500": 1, "503": 1, "connection": 2, "garbage": 2}
  assert summary["requests_sent"] == 8 and summary["answers_paid"] == 1
  assert time.monotonic() - start >= 2.0  # Retry-After: 1 on the 429 and the 503, honoured
  assert list(server.paid_keys().values()) == [1]
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert rows[-1]["answers"] == 1 and rows[-1]["retries"] == 7


def test_timeout_is_retried(tmp_path):
  with FaultyLLMServer(faults=["slow"], slow_s=1.5) as server:
    (answer,), summary = _ask_all(server, tmp_path, _requests(1), timeout_s=0.5)
  assert answer.text.startswith("answer ")
  assert summary["retries"] == {"timeout": 1} and summary["answers_paid"] == 1


def test_client_errors_are_not_retried(server, tmp_path):
  server.add_faults("400")
  (bad, good), summary = _ask_all(server, tmp_path, _requests(2), concurrency=1)
  assert isinstance(bad, llm_lib.RequestFailed) and "HTTP 400" in str(bad)
  assert good.text.startswith("answer ") and summary["requests_sent"] == 2 and summary["failed"] == 1
  server.add_faults("401")
  (denied,), _ = _ask_all(server, tmp_path, _requests(1, tag="other"))
  assert isinstance(denied, llm_lib.EndpointError) and "HTTP 401" in str(denied)


def test_an_endpoint_that_refuses_connections_stops_the_run_at_once(tmp_path):
  nobody = types.SimpleNamespace(base_url=f"http://127.0.0.1:{free_port()}/v1")  # nothing listens there
  results, summary = _ask_all(nobody, tmp_path, _requests(6), concurrency=2, max_attempts=4)
  assert all(isinstance(r, llm_lib.EndpointError) for r in results), results
  assert str(results[0]).startswith(f"cannot connect to {nobody.base_url} (") and "Connect call failed" in str(
    results[0]
  )
  # 4 refusals end the run: after them each request fails at its next try (not 6 x 4 tries with backoff)
  assert summary["requests_sent"] <= 4 + 6


def test_spent_retries_fail_one_request_and_the_run_goes_on(tmp_path):
  def always_500_for_q0(endpoint, body):
    return "500" if body["messages"][0]["content"] == "q 0" else None

  with FaultyLLMServer(fault_for=always_500_for_q0) as server:
    results, summary = _ask_all(server, tmp_path, _requests(4), concurrency=2, max_attempts=3)
  assert isinstance(results[0], llm_lib.RequestFailed) and "500" in str(results[0])
  assert all(isinstance(r, llm_lib.Answer) for r in results[1:])
  assert summary["failed"] == 1 and summary["answers"] == 3 and summary["retries"] == {"500": 3}


def test_rerun_pays_nothing_and_identical_requests_are_sent_once(tmp_path):
  with FaultyLLMServer(fault_rate=0.3, retry_after="0", seed=3) as server:
    requests = _requests(24) + _requests(6)  # the last 6 repeat the first 6, all in flight at once
    first, summary = _ask_all(server, tmp_path, requests, concurrency=6)
    assert all(isinstance(a, llm_lib.Answer) for a in first)
    assert summary["answers_paid"] == 24 and sum(summary["retries"].values()) > 0
    assert set(server.paid_keys().values()) == {1} and len(server.paid_keys()) == 24
    sent_before = len(server.log)
    second, summary = _ask_all(server, tmp_path, requests, concurrency=6)
    assert len(server.log) == sent_before  # no HTTP request at all
    assert summary["answers_cached"] == 30 and summary["requests_sent"] == 0
    assert [a.text for a in second] == [a.text for a in first] and all(a.cached for a in second)


def test_caps_stop_cleanly_and_cached_answers_stay_free(server, tmp_path):
  results, summary = _ask_all(server, tmp_path, _requests(10), concurrency=1, max_requests=4)
  assert [isinstance(r, llm_lib.Answer) for r in results] == [True] * 4 + [False] * 6
  assert all(isinstance(r, llm_lib.BudgetExhausted) for r in results[4:])
  assert summary["stopped_by_cap"] == "--max_requests=4" and summary["not_sent_over_cap"] == 6
  per_answer = results[0].usage["prompt_tokens"] + results[0].usage["completion_tokens"]
  # Token cap: the 4 cached answers count (free), then 2 more are paid before the cap is crossed.
  results, summary = _ask_all(server, tmp_path, _requests(10), concurrency=1, max_tokens_total=5 * per_answer + 1)
  assert [isinstance(r, llm_lib.Answer) for r in results] == [True] * 6 + [False] * 4
  assert summary["answers_cached"] == 4 and summary["answers_paid"] == 2
  assert "max_tokens_total" in summary["stopped_by_cap"]
  assert len(server.paid_keys()) == 6 and set(server.paid_keys().values()) == {1}


CLIENT = """
import asyncio, sys
from phi1_jax.stages import llm
async def main(base_url, cache, n):
  client = llm.LLM(base_url, cache_path=cache, concurrency=4, backoff_base_s=0.01)
  requests = [llm.chat_request("test-model", [{"role": "user", "content": f"q {i}"}], seed=i, max_tokens=16)
              for i in range(n)]
  await asyncio.gather(*(client.ask(r) for r in requests))
  await client.aclose()
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _run_client(server, cache, n):
  return subprocess.Popen(
    [sys.executable, "-c", CLIENT, server.base_url, str(cache), str(n)],
    cwd=REPO,
    env=repo_env(),
    stderr=subprocess.PIPE,
    text=True,
  )


def test_sigkill_mid_run_then_rerun_pays_only_for_what_never_arrived(tmp_path):
  n, cache = 60, tmp_path / "cache.sqlite"
  with FaultyLLMServer(delay_s=0.05, fault_rate=0.1, retry_after="0", seed=1) as server:
    client = _run_client(server, cache, n)
    deadline = time.monotonic() + 60
    while len(server.paid_keys()) < 15 and time.monotonic() < deadline:
      time.sleep(0.01)
    client.send_signal(signal.SIGKILL)
    client.wait()
    assert client.returncode == -signal.SIGKILL
    with sqlite3.connect(cache) as db:
      committed = {row[0] for row in db.execute("SELECT request FROM answers")}
    assert 15 - 4 <= len(committed) < n  # at most 4 (concurrency) answers were on their way
    committed = {canonical(json.loads(body)) for body in committed}
    log_before = len(server.log)
    rerun = _run_client(server, cache, n)
    assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
    asked_again = {canonical(entry["body"]) for entry in server.log[log_before:]}
  assert asked_again and not committed & asked_again  # nothing received is asked for again
  with sqlite3.connect(cache) as db:
    assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == n
  # At most the requests in flight at the kill (concurrency 4) were answered twice.
  assert sum(count - 1 for count in server.paid_keys().values()) <= 4


def test_failed_requests_are_reported_by_reason_with_counts(tmp_path):
  def faults(endpoint, body):  # 3 prompts too long for the model (each its own numbers), 2 a broken server
    i = int(body["messages"][0]["content"].split()[1])
    if i < 3:
      return f"400:this model's maximum context length is 128 tokens, but {131 + i} were requested"
    return "500" if i < 5 else None

  logged = []
  with FaultyLLMServer(fault_for=faults) as server:
    results, summary = _ask_all(server, tmp_path, _requests(6), concurrency=1, max_attempts=2, log=logged.append)
  assert [type(r).__name__ for r in results] == ["RequestFailed"] * 5 + ["Answer"]
  too_long = (
    f"HTTP 400 from {server.base_url}: this model's maximum context length is 128 tokens, but 131 were requested"
  )
  broken = f"gave up after 2 tries, the last: HTTP 500 from {server.base_url}: deliberate 500"
  assert summary["failures"] == {too_long: 3, broken: 2} and summary["failed"] == 5
  assert llm_lib.describe_failures(summary["failures"]) == f"3 x {too_long}; 2 x {broken}"
  assert llm_lib.describe_failures(summary["failures"], shown=1) == f"3 x {too_long}; 2 more"
  # each reason is logged once, as it first happens
  assert [line for line in logged if "failed:" in line] == [
    f"llm: a request failed: {too_long}",
    f"llm: a request failed: {broken}",
  ]


def test_a_dead_endpoint_ends_every_request_within_the_window(tmp_path):
  server = FaultyLLMServer().start()

  async def go():
    client = llm_lib.LLM(
      server.base_url, cache_path=tmp_path / "cache.sqlite", concurrency=4, backoff_base_s=0.3, give_up_after_s=1.5
    )
    answers = await asyncio.gather(*(client.ask(r) for r in _requests(4)))
    server.die()  # the server goes away mid-run: connections refused from now on
    start = time.monotonic()

    async def one(request):
      try:
        return await client.ask(request)
      except llm_lib.LLMError as error:
        return error

    results = await asyncio.gather(*(one(r) for r in _requests(12, tag="later")))
    elapsed = time.monotonic() - start
    await client.aclose()
    return answers, results, elapsed, client.summary()

  answers, results, elapsed, summary = asyncio.run(go())
  assert all(isinstance(a, llm_lib.Answer) for a in answers)
  assert all(isinstance(r, llm_lib.EndpointError) for r in results), results
  message = str(results[0])
  assert message.startswith(f"every request to {server.base_url} failed for ") and "--give_up_after=1.5" in message
  assert "the last with: connection" in message and message.endswith("rerun the same command to resume")
  assert 1.5 <= elapsed < 4 and summary["endpoint_down"] == message

  # a slow answer on its way shows the server at work: failures around it are those requests' own
  def others_fail(endpoint, body):
    return "slow" if body["messages"][0]["content"] == "q 0" else "500"

  with FaultyLLMServer(fault_for=others_fail, slow_s=2.5) as server:
    results, summary = _ask_all(
      server, tmp_path / "slow", _requests(3), max_attempts=5, backoff_base_s=0.1, give_up_after_s=1.0
    )
  assert isinstance(results[0], llm_lib.Answer) and summary["endpoint_down"] is None
  assert [type(r).__name__ for r in results[1:]] == ["RequestFailed"] * 2

  # one request failing again and again is that request's problem, not a dead endpoint
  def q0_breaks_the_server(endpoint, body):
    return "500" if body["messages"][0]["content"] == "q 0" else None

  with FaultyLLMServer(fault_for=q0_breaks_the_server) as server:
    results, summary = _ask_all(
      server, tmp_path / "one", _requests(1), max_attempts=6, backoff_base_s=0.2, give_up_after_s=0.3
    )
  assert isinstance(results[0], llm_lib.RequestFailed) and summary["requests_sent"] == 6


@pytest.mark.slow
def test_curate_annotate_against_an_endpoint_that_dies_mid_run_stops_in_one_line_then_resumes(tmp_path):
  """The window lives in the shared client, so `curate annotate` (not only synth) gets it."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(40):
    (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
  out = tmp_path / "ann"
  server = FaultyLLMServer(delay_s=0.1).start()
  argv = [
    sys.executable,
    "-m",
    "phi1_jax.curate",
    "annotate",
    "--input",
    str(corpus),
    f"--out={out}",
    f"--base_url={server.base_url}",
    "--model=test",
    "--concurrency=2",
    "--backoff_s=0.05",
    "--give_up_after=2",
  ]
  run = subprocess.Popen(
    argv,
    cwd=REPO,
    env=repo_env(),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    deadline = time.monotonic() + 60
    while len(server.paid_keys()) < 4 and time.monotonic() < deadline:
      time.sleep(0.01)
    server.die()
    died = time.monotonic()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 2 and time.monotonic() - died < 2 + 8, err[-2000:]
  finally:
    run.kill()
  last = err.strip().splitlines()[-1]
  assert (
    last.startswith(f"python -m phi1_jax.curate annotate: error: every request to {server.base_url} failed for ")
    and "Traceback" not in err
  )
  with sqlite3.connect(out / "llm_cache.sqlite") as db:
    committed = {canonical(json.loads(body)) for (body,) in db.execute("SELECT request FROM answers")}
  port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
  with FaultyLLMServer(port=port) as again:
    rerun = subprocess.run(argv, cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert committed and not committed & {canonical(e["body"]) for e in again.log}
  assert len((out / "annotations.jsonl").read_text().splitlines()) == 40
