"""The data stages against the project's own server: `python -m phi1_jax.serve` on a tiny random
checkpoint is the real endpoint of `curate annotate` and `synth textbooks` (chat completions).

A random model's answers hold no score and no textbook, so this checks the plumbing: every document
gets one row, unparseable scores and rejections are recorded by reason, and a rerun pays nothing
(the server generates no token). Quality is the scripted endpoints' business (test_curate.py,
test_synth.py).
"""

import json
import os
import urllib.request
from pathlib import Path

import pytest

from helpers import run_module, serve_process

pytestmark = pytest.mark.slow

DOCS = ("json/encoder.py", "json/decoder.py", "json/scanner.py", "bisect.py", "heapq.py")
# The default rubric plus 4,000 characters is over 1,000 tokens: more than the tiny model's 512.
SHORT_PROMPT = "Rate this code from 0 to 5 for teaching.\n```\n{document}\n```\nEducational score:"


def _health(url: str) -> dict:
  with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
    return json.loads(resp.read())


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
  """(base URL, model name) of a real `phi1_jax.serve` on 127.0.0.1, ready (GET /health 200)."""
  with serve_process(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "server.log", "--max_batch=4") as (url, _):
    yield url, tiny_checkpoint.name


def _endpoint_flags(served):
  url, model = served
  return [f"--base_url={url}/v1", f"--model={model}"]


def test_annotate_against_serve_records_every_document_once_and_a_rerun_pays_nothing(served, tmp_path):
  std = Path(os.__file__).parent
  docs = tmp_path / "docs"
  docs.mkdir()
  for name in DOCS:
    (docs / name.replace("/", "_")).write_text((std / name).read_text())
  prompt = tmp_path / "prompt.txt"
  prompt.write_text(SHORT_PROMPT)
  out = tmp_path / "annotations"
  argv = [
    "annotate",
    "--input",
    str(docs),
    f"--out={out}",
    f"--prompt={prompt}",
    "--max_chars=600",
    "--max_new_tokens=16",
    *_endpoint_flags(served),
  ]
  first = run_module("phi1_jax.curate", *argv)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
  assert sorted(r["id"] for r in rows) == sorted(f"docs/{n.replace('/', '_')}" for n in DOCS)
  for row in rows:  # the model's own words, parsed or recorded as unparseable
    assert row["usage"]["completion_tokens"] >= 1 and isinstance(row["response"], str)
    assert row["score"] is None or 0 <= row["score"] <= 5
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["annotated"] == len(DOCS) and manifest["remaining"] == 0
  assert manifest["unparseable"] == sum(r["score"] is None for r in rows)
  assert manifest["llm_this_run"]["answers_paid"] == len(DOCS) and manifest["llm_this_run"]["failed"] == 0

  generated = _health(served[0])["tokens_generated"]
  again = run_module("phi1_jax.curate", *argv)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _health(served[0])["tokens_generated"] == generated  # the server was not asked again
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["llm_this_run"]["requests_sent"] == 0 and manifest["annotated"] == len(DOCS)
  assert len((out / "annotations.jsonl").read_text().splitlines()) == len(DOCS)  # no row twice

  # the default rubric does not fit a 512-token context: each document fails with the server's reason
  too_long = run_module(
    "phi1_jax.curate",
    "annotate",
    "--input",
    str(docs),
    f"--out={tmp_path / 'long'}",
    "--max_new_tokens=16",
    *_endpoint_flags(served),
  )
  assert too_long.returncode == 1, too_long.stderr[-3000:]  # nothing annotated at all: said in the exit code
  assert "maximum context length is 512 tokens" in too_long.stderr
  assert (
    too_long.stderr.strip()
    .splitlines()[-1]
    .startswith(
      f"python -m phi1_jax.curate annotate: error: none of {len(DOCS)} documents annotated: all {len(DOCS)} requests failed"
    )
  )
  assert json.loads((tmp_path / "long/manifest.json").read_text())["failed_this_run"] == len(DOCS)


def test_synth_textbooks_against_serve_rejects_noise_stops_at_max_prompts_and_a_rerun_pays_nothing(served, tmp_path):
  out = tmp_path / "books"
  argv = ["textbooks", "--n=2", "--max_prompts=4", "--max_tokens=32", f"--out={out}", *_endpoint_flags(served)]
  first = run_module("phi1_jax.synth", *argv)
  assert first.returncode == 1, first.stderr[-3000:]  # stopped by --max_prompts: not a cap, not done
  assert "stopped by --max_prompts=4: 0 of 2 written" in first.stdout
  manifest = json.loads((out / "manifest.json").read_text())
  counts = manifest["counts"]
  assert not manifest["complete"] and manifest["stopped_by"] == ["--max_prompts=4"]
  assert counts["written"] == 0 and counts["prompts"] == 4
  assert sum(counts["rejected"].values()) == 4, counts  # every answer rejected, each with its reason
  assert set(counts["rejected"]) <= {
    "truncated",
    "too_short",
    "refusal",
    "meta_boilerplate",
    "no_code",
    "unclosed_code_fence",
    "code_syntax_error",
    "repetitive",
  }, counts
  assert manifest["llm"]["answers_paid"] == 4 and manifest["spend"]["cache"]["answers"] == 4

  generated = _health(served[0])["tokens_generated"]
  again = run_module("phi1_jax.synth", *argv)
  assert again.returncode == 1, again.stderr[-3000:]
  assert _health(served[0])["tokens_generated"] == generated  # the same 4 answers, from the cache
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["llm"]["requests_sent"] == 0 and manifest["llm"]["answers_cached"] == 4
  assert manifest["counts"]["rejected"] == counts["rejected"]
