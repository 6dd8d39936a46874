"""`python -m phi1_jax.curate`: annotation against a real HTTP endpoint (faults, caps, SIGKILL + rerun),
the classifier's metrics on a labelled fixture, and the datatrove filter end to end on stdlib code
(rerun, SIGKILL + resume, packing its output).

The endpoint is the `endpoint` fixture: a misbehaving OpenAI-compatible server on 127.0.0.1
(tests/llm_servers.py) whose answers are a function of the document, so each row can be checked.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from curate_fixtures import STDLIB, make_checkpoint
from llm_servers import FaultyLLMServer, prompt_text
from phi1_jax.curate import __main__ as curate_cli
from phi1_jax.curate.annotate import parse_score

MODEL = "judge-model"
CORPUS = [STDLIB / "json", STDLIB / "http"]  # 10 documents


def judge(endpoint: str, body: dict) -> str:
  """The endpoint's answer: a score fixed by the document, and no score line for about 1 in 6."""
  doc = prompt_text(endpoint, body).split("```")[1].strip()
  h = int(hashlib.sha256(doc.encode()).hexdigest(), 16)
  if h % 6 == 0:
    return "I cannot rate this."
  return f"Some reasons.\nEducational score: 9\nOn reflection:\nEducational score: {h % 6}"


@pytest.fixture
def endpoint():
  """(server, base_url, model): the LLM the annotation tests talk to, over real HTTP."""
  with FaultyLLMServer(responder=judge, retry_after="0") as server:
    yield server, server.base_url, MODEL


def _cli(*args, timeout=120):
  env = {**os.environ, "PYTHONPATH": f"{REPO}", "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "phi1_jax.curate", *args], cwd=REPO, env=env, timeout=timeout,
                        capture_output=True, text=True)


def _annotate_args(base_url, out, *extra):
  return ["annotate", "--input", *map(str, CORPUS), f"--out={out}", f"--base_url={base_url}", f"--model={MODEL}",
          *extra]


def _rows(out: Path) -> list[dict]:
  return [json.loads(l) for l in (out / "annotations.jsonl").read_text().splitlines()]


def _expected_ids() -> set[str]:
  return {f"{d.name}/{f.relative_to(d).as_posix()}" for d in CORPUS for f in d.rglob("*.py")
          if f.read_text().strip()}


def _check_rows(rows, server):
  """Each document once, each row the endpoint's answer to that document, each answer paid once."""
  ids = [r["id"] for r in rows]
  assert len(ids) == len(set(ids)) and set(ids) == _expected_ids()
  for r in rows:
    assert r["score"] == parse_score(r["response"]) and r["model"] == MODEL and r["usage"]["completion_tokens"] > 0
    assert "Educational score" not in r["response"] or r["score"] in range(6)  # the last line counts, not the 9
  paid = server.paid_keys()
  assert len(paid) == len(rows) and set(paid.values()) == {1}


def test_parse_score_takes_the_last_valid_line():
  assert parse_score("Educational score: 2\n...\nEducational score: **4**") == 4
  assert parse_score("Educational score: 7") is None and parse_score("no score") is None


def test_annotate_through_faults_each_document_once(endpoint, tmp_path):
  server, base_url, _ = endpoint
  # 429 and 503 with Retry-After, 500, dropped and reset connections, 200s with HTML or no choices:
  server.add_faults("429", "500", "503", "drop", "reset", "garbage", "no_choices", "429", "drop")
  out = tmp_path / "ann"
  proc = _cli(*_annotate_args(base_url, out, "--concurrency=4", "--max_attempts=30"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = _rows(out)
  _check_rows(rows, server)
  assert sum(v for k, v in server.outcomes().items() if k != "ok") == 9
  m = json.loads((out / "manifest.json").read_text())
  assert m["annotated"] == m["documents"] == 10 and m["remaining"] == 0
  assert m["unparseable"] == sum(r["score"] is None for r in rows) > 0
  assert sum(m["score_histogram"].values()) == 10 - m["unparseable"]
  assert m["llm_this_run"]["answers_paid"] == 10 and sum(m["llm_this_run"]["retries"].values()) == 9
  assert m["tokens"]["completion"] == sum(r["usage"]["completion_tokens"] for r in rows)
  assert "llm:" in proc.stderr and "/s" in proc.stderr  # progress lines with a rate

  again = _cli(*_annotate_args(base_url, out))  # a rerun: nothing asked, nothing paid
  assert again.returncode == 0, again.stderr[-2000:]
  assert _rows(out) == rows and len(server.paid_keys()) == 10
  assert json.loads((out / "manifest.json").read_text())["llm_this_run"]["requests_sent"] == 0


def test_annotate_sigkill_then_rerun_pays_nothing_twice(endpoint, tmp_path):
  server, base_url, _ = endpoint
  server.delay_s = 0.4
  out = tmp_path / "ann"
  env = {**os.environ, "PYTHONPATH": f"{REPO}"}
  proc = subprocess.Popen([sys.executable, "-m", "phi1_jax.curate", *_annotate_args(base_url, out, "--concurrency=1")],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      f = out / "annotations.jsonl"
      if f.is_file() and f.read_text().count("\n") >= 3:
        break
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait()
  partial = _rows(out)
  assert 3 <= len(partial) < 10
  server.delay_s = 0.0
  again = _cli(*_annotate_args(base_url, out, "--concurrency=4"))
  assert again.returncode == 0, again.stderr[-2000:]
  rows = _rows(out)
  assert rows[:len(partial)] == partial  # rows written before the kill are kept as they were
  _check_rows(rows, server)


def test_annotate_cap_stops_cleanly_and_a_rerun_goes_on(endpoint, tmp_path):
  server, base_url, _ = endpoint
  out = tmp_path / "ann"
  proc = _cli(*_annotate_args(base_url, out, "--concurrency=2", "--max_requests=4"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "max_requests=4" in proc.stderr
  m = json.loads((out / "manifest.json").read_text())
  assert m["annotated"] == 4 and m["remaining"] == 6 and m["stopped_by_cap"] == "--max_requests=4"
  assert len(server.paid_keys()) == 4
  proc = _cli(*_annotate_args(base_url, out, "--concurrency=2", "--sample=5", "--seed=1"))
  assert proc.returncode == 2 and "other settings" in proc.stderr  # another sample: not in this folder
  proc = _cli(*_annotate_args(base_url, out, "--concurrency=2"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  _check_rows(_rows(out), server)


@pytest.mark.parametrize("fault_or_flag, message", [
    ("401", "HTTP 401"), ("--prompt", "placeholder"), ("--base_url=ftp://x", "http:// or https://"),
    ("--sample=0", "--sample=0"), ("--input=/nonexistent", "/nonexistent")])
def test_annotate_refusals_are_one_line_exit_2(endpoint, tmp_path, capsys, fault_or_flag, message):
  server, base_url, _ = endpoint
  args = _annotate_args(base_url, tmp_path / "ann")
  if fault_or_flag == "401":
    server.fault_for = lambda endpoint, body: "401"
  elif fault_or_flag == "--prompt":
    (tmp_path / "p.txt").write_text("Rate this.")
    args.append(f"--prompt={tmp_path / 'p.txt'}")
  else:
    args.append(fault_or_flag)
  assert curate_cli.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1] and err[-1].startswith("curate annotate: error:")
  assert not server.paid_keys()
