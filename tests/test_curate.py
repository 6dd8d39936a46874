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
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, STDLIB, alive, repo_env
from curate_fixtures import make_checkpoint
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
  env = repo_env(JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "phi1_jax.curate", *args], cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True
  )


def _annotate_args(base_url, out, *extra):
  return [
    "annotate",
    "--input",
    *map(str, CORPUS),
    f"--out={out}",
    f"--base_url={base_url}",
    f"--model={MODEL}",
    *extra,
  ]


def _rows(out: Path) -> list[dict]:
  return [json.loads(l) for l in (out / "annotations.jsonl").read_text().splitlines()]


def _expected_ids() -> set[str]:
  return {f"{d.name}/{f.relative_to(d).as_posix()}" for d in CORPUS for f in d.rglob("*.py") if f.read_text().strip()}


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


def test_logprob_score_is_p_yes_from_the_top_logprobs():
  import math

  from phi1_jax.curate.annotate import p_yes

  top = {" yes": math.log(0.5), "Yes": math.log(0.2), " no": math.log(0.3)}
  response = {"choices": [{"text": " yes", "logprobs": {"tokens": [" yes"], "top_logprobs": [top]}}]}
  assert p_yes(response) == pytest.approx(0.7)
  assert p_yes({"choices": [{"text": " no", "logprobs": None}]}) is None  # no logprobs: unscored


def test_annotate_through_faults_each_document_once(endpoint, tmp_path):
  server, base_url, _ = endpoint
  # 429 and 503 with Retry-After, 500, dropped and reset connections, 200s with HTML or no choices:
  server.add_faults("429", "500", "503", "drop", "reset", "garbage", "no_choices", "429", "drop")
  out = tmp_path / "ann"
  proc = _cli(*_annotate_args(base_url, out, "--concurrency=4", "--max_attempts=30", "--backoff_s=0.05"))
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


@pytest.mark.slow
def test_annotate_sigkill_then_rerun_pays_nothing_twice(endpoint, tmp_path):
  server, base_url, _ = endpoint
  server.delay_s = 0.4
  out = tmp_path / "ann"
  env = repo_env()
  proc = subprocess.Popen(
    [sys.executable, "-m", "phi1_jax.curate", *_annotate_args(base_url, out, "--concurrency=1")],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
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
  assert rows[: len(partial)] == partial  # rows written before the kill are kept as they were
  _check_rows(rows, server)


@pytest.mark.slow
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


@pytest.mark.slow
def test_annotate_exits_1_when_every_request_failed_and_0_when_some_did_not(endpoint, tmp_path):
  server, base_url, _ = endpoint
  out = tmp_path / "ann"
  flags = ("--concurrency=2", "--max_attempts=2", "--backoff_s=0.01")
  server.fault_for = lambda endpoint, body: "500"  # every request, every try
  proc = _cli(*_annotate_args(base_url, out, *flags))
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(
    "python -m phi1_jax.curate annotate: error: none of 10 documents annotated: all 10 requests failed"
  ), last
  m = json.loads((out / "manifest.json").read_text())  # what was learnt is kept
  assert m["annotated"] == 0 and m["failed_this_run"] == 10 and not _rows(out)

  # Some fail (HTTP 400: the request itself is wrong), some are answered: success, exit 0.
  server.fault_for = lambda endpoint, body: "400" if "json" in prompt_text(endpoint, body).split("```")[1] else None
  proc = _cli(*_annotate_args(base_url, out, *flags))
  assert proc.returncode == 0, proc.stderr[-2000:]
  m = json.loads((out / "manifest.json").read_text())
  assert 0 < m["annotated"] < 10 and m["failed_this_run"] == 10 - m["annotated"]

  # Only failures this run, but rows from before: exit 0, nothing lost; then the rest is retried.
  server.fault_for = lambda endpoint, body: "500"
  proc = _cli(*_annotate_args(base_url, out, *flags))
  assert proc.returncode == 0 and json.loads((out / "manifest.json").read_text())["annotated"] == m["annotated"]
  server.fault_for = None
  proc = _cli(*_annotate_args(base_url, out, *flags))
  assert proc.returncode == 0, proc.stderr[-2000:]
  _check_rows(_rows(out), server)


def test_annotate_passes_over_a_non_utf8_file_as_pack_does(endpoint, tmp_path):
  server, base_url, _ = endpoint
  src = tmp_path / "src"
  shutil.copytree(STDLIB / "json", src)
  (src / "latin1.py").write_bytes(b"# line one\ns = '\xe9'\n")
  args = ["annotate", "--input", str(src), f"--base_url={base_url}", f"--model={MODEL}"]
  proc = _cli(*args, f"--out={tmp_path / 'strict'}")  # 1 bad of 6 items is past the default 0.1%
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
    f"python -m phi1_jax.curate annotate: error: 1 of 6 items are bad (16.667% > --max_bad_fraction 0.100%); first: "
    f"{src / 'latin1.py'}:2: not UTF-8"
  )
  assert not server.paid_keys()
  proc = _cli(*args, f"--out={tmp_path / 'ann'}", "--max_bad_fraction=0.2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"warning: bad item {src / 'latin1.py'}:2: not UTF-8" in proc.stderr
  m = json.loads((tmp_path / "ann" / "manifest.json").read_text())
  assert m["annotated"] == m["documents"] == 5 and m["bad_input_items"]["count"] == 1


@pytest.mark.parametrize(
  "fault_or_flag, message",
  [
    ("401", "HTTP 401"),
    ("--prompt", "placeholder"),
    ("--base_url=ftp://x", "http:// or https://"),
    ("--sample=0", "--sample=0"),
    ("--input=/nonexistent", "/nonexistent"),
  ],
)
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
  assert message in err[-1] and err[-1].startswith("python -m phi1_jax.curate annotate: error:")
  assert not server.paid_keys()


# ---------------------------------------------------------------- classifier


def _write_embeddings(folder: Path, ids: list[str], vecs: np.ndarray) -> Path:
  """A folder in `curate embed`'s format (one shard) holding given vectors."""
  folder.mkdir(parents=True)
  np.save(folder / "emb-00000.npy", vecs.astype(np.float16))
  (folder / "ids-00000.txt").write_text("".join(i + "\n" for i in ids))
  manifest = {
    "format": "phi1_jax.embeddings/v1",
    "shards": 1,
    "documents": len(ids),
    "embedder": {"dim": vecs.shape[1], "fingerprint": "fixture", "checkpoint": "none"},
  }
  (folder / "manifest.json").write_text(json.dumps(manifest))
  return folder


def test_classifier_metrics_on_a_labelled_fixture(tmp_path):
  from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

  from phi1_jax.curate.classifier import load_classifier, train_classifier
  from phi1_jax.cli import UserError

  rng = np.random.default_rng(0)
  n = 400
  scores = rng.integers(0, 6, n)
  # Educational documents (score >= 3) sit along one direction, with noise that makes some errors.
  vecs = rng.normal(size=(n, 16)) + 1.2 * (scores >= 3)[:, None] * np.eye(16)[0]
  ids = [f"doc-{i}" for i in range(n)]
  _write_embeddings(tmp_path / "emb", ids + ["unlabelled"], np.vstack([vecs, np.zeros((1, 16))]))
  rows = [{"id": i, "score": int(s), "response": "", "model": "m", "usage": {}} for i, s in zip(ids, scores)]
  rows.append({"id": "unparsed", "score": None, "response": "?", "model": "m", "usage": {}})  # no embedding needed
  (tmp_path / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

  info = train_classifier(tmp_path / "annotations.jsonl", tmp_path / "emb", tmp_path / "cls", trees=50)
  assert info["unparseable_annotations"] == 1 and info["train_documents"] + info["test_documents"] == n
  assert 40 < info["test_documents"] < 120
  preds = [json.loads(l) for l in (tmp_path / "cls" / "test_predictions.jsonl").read_text().splitlines()]
  for kind in ("random_forest", "logistic"):
    y = np.array([p["label"] for p in preds])
    prob = np.array([p[f"prob_{kind}"] for p in preds])
    m = info["metrics"][kind]
    assert m["precision"] == pytest.approx(precision_score(y, prob >= 0.5))
    assert m["recall"] == pytest.approx(recall_score(y, prob >= 0.5))
    assert m["f1"] == pytest.approx(f1_score(y, prob >= 0.5)) and m["f1"] > 0.6
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, prob)) and m["roc_auc"] > 0.7
    assert sum(m["confusion_matrix"].values()) == len(preds)
  model, loaded = load_classifier(tmp_path / "cls")  # skops, not pickle
  assert loaded["model"] == "random_forest" and loaded["embedder"]["fingerprint"] == "fixture"
  row = {i: k for k, i in enumerate(ids)}
  x = vecs[[row[p["id"]] for p in preds]].astype(np.float16).astype(np.float32)
  np.testing.assert_allclose(model.predict_proba(x)[:, 1], [p["prob_random_forest"] for p in preds])

  # The same inputs and settings again: done, nothing rewritten; other settings: refused, nothing touched.
  stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cls").iterdir()}
  said = []
  assert (
    train_classifier(tmp_path / "annotations.jsonl", tmp_path / "emb", tmp_path / "cls", trees=50, log=said.append)
    == info
  )
  assert said == [
    f"{tmp_path / 'cls'}: already holds the random_forest trained on these annotations and embeddings; nothing to do"
  ]
  with pytest.raises(UserError, match=r"other settings \(threshold 3 -> 4\)"):
    train_classifier(tmp_path / "annotations.jsonl", tmp_path / "emb", tmp_path / "cls", trees=50, threshold=4)
  os.utime(
    tmp_path / "annotations.jsonl"
  )  # written again with the same rows (as a rerun of embed rewrites its manifest)
  os.utime(tmp_path / "emb" / "manifest.json")
  assert train_classifier(tmp_path / "annotations.jsonl", tmp_path / "emb", tmp_path / "cls", trees=50) == info
  rows = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
  scored = next(r for r in rows if r.get("score") is not None)
  scored["score"] = 5 if scored["score"] != 5 else 0  # one label changed
  (tmp_path / "changed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(UserError, match=r"other settings \(annotations .*; data_sha256 "):
    train_classifier(tmp_path / "changed.jsonl", tmp_path / "emb", tmp_path / "cls", trees=50)
  assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cls").iterdir()} == stamps
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="not empty"):  # a folder of someone else's is never written into
    train_classifier(tmp_path / "annotations.jsonl", tmp_path / "emb", tmp_path / "mine")
  # The same annotations in another order (annotate writes them as answers arrive): the same classifier.
  original = (tmp_path / "annotations.jsonl").read_text().splitlines(keepends=True)
  (tmp_path / "shuffled.jsonl").write_text("".join(reversed(original)))
  shuffled = train_classifier(tmp_path / "shuffled.jsonl", tmp_path / "emb", tmp_path / "cls3", trees=50)
  assert shuffled["metrics"] == info["metrics"]
  assert (tmp_path / "cls3" / "test_predictions.jsonl").read_text() == (
    tmp_path / "cls" / "test_predictions.jsonl"
  ).read_text()
  (tmp_path / "more.jsonl").write_text(json.dumps({"id": "stranger", "score": 4}) + "\n")
  with pytest.raises(Exception, match="no embedding for 1 annotated document"):
    train_classifier(tmp_path / "more.jsonl", tmp_path / "emb", tmp_path / "cls2")


# ---------------------------------------------------------------- filter


def _data_rows(folder: Path) -> list[dict]:
  rows = []
  for f in sorted(folder.glob("*.jsonl.gz")):
    with gzip.open(f, "rt") as fh:
      rows += [json.loads(l) for l in fh]
  return rows


def _build_filter_setup(base: Path) -> int:
  from phi1_jax.curate.classifier import train_classifier
  from phi1_jax.curate.embeddings import embed_documents

  ckpt = make_checkpoint(base / "ckpt")
  copies = []
  for name in ("charset.py", "errors.py", "iterators.py"):
    text = (STDLIB / "email" / name).read_text()
    copies.append({"id": f"copy/{name}", "text": "# a copied file\n" + text, "source": "copies", "meta": {}})
  (base / "copies.jsonl").write_text("".join(json.dumps(c) + "\n" for c in copies))
  embed_documents(_filter_inputs(base), ckpt, base / "emb", max_len=64, log=lambda *_: None)
  ids = (base / "emb" / "ids-00000.txt").read_text().splitlines()
  rows = [{"id": i, "score": 4 if i.startswith(("email/", "copy/")) else 1} for i in ids]
  (base / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  train_classifier(
    base / "annotations.jsonl", base / "emb", base / "cls", trees=30, test_fraction=0.3, log=lambda *_: None
  )
  proc = _cli(*_filter_args(_filter_inputs(base), base / "cls", base / "filtered", "--workers=2"), timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (base / "filter.log").write_text(proc.stdout + proc.stderr)
  return len(ids)


def _filter_inputs(base: Path) -> list[str]:
  email = [
    "__init__.py",
    "base64mime.py",
    "charset.py",
    "encoders.py",
    "errors.py",
    "iterators.py",
    "parser.py",
    "quoprimime.py",
    "utils.py",
  ]
  return [
    str(STDLIB / "json"),
    str(STDLIB / "http"),
    *(str(STDLIB / "email" / n) for n in email),
    str(base / "copies.jsonl"),
  ]


@pytest.fixture(scope="module")
def filter_setup(tmp_path_factory):
  """Inputs (stdlib json, http and some of email, plus near-copies of three email files), a
  classifier trained on a tiny checkpoint's embeddings with labels 'email-like is educational', and
  a finished filter run on two tasks by a local pool of two workers. Built once for all pytest-xdist
  workers (a file lock in their shared temporary folder)."""
  from filelock import FileLock

  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp sits in this session's folder
    shared = shared.parent
  base = shared / "curate_filter"
  with FileLock(str(shared / "curate_filter.lock")):
    if not (base / "done.json").is_file():
      if base.exists():
        shutil.rmtree(base)
      base.mkdir()
      (base / "done.json").write_text(json.dumps({"documents": _build_filter_setup(base)}))
  n_docs = json.loads((base / "done.json").read_text())["documents"]
  return base, _filter_inputs(base), base / "ckpt", n_docs


def _filter_args(inputs, cls, out, *extra):
  return ["filter", "--input", *inputs, f"--classifier={cls}", f"--out={out}", "--tasks=2", *extra]


@pytest.fixture(scope="module")
def filtered(filter_setup):
  """The finished filter run: (its folder, its log)."""
  base = filter_setup[0]
  return base / "filtered", (base / "filter.log").read_text()


@pytest.mark.slow
def test_filter_end_to_end_rerun_and_pack(filter_setup, filtered, tmp_path):
  from phi1_jax.data.pack import pack

  base, inputs, ckpt, n_docs = filter_setup
  out, log = filtered
  scored = _data_rows(out / "scored")
  kept, dups = _data_rows(out / "data"), _data_rows(out / "duplicates")
  cut = json.loads((base / "cls" / "model_info.json").read_text())["cut"]
  above = {r["id"] for r in scored if r["meta"]["edu_score"] >= cut}
  assert len(scored) == len({r["id"] for r in scored}) == n_docs  # each document once
  assert {r["id"] for r in kept} | {r["id"] for r in dups} == above and not {r["id"] for r in kept} & {
    r["id"] for r in dups
  }
  # Each copy and its original are near-duplicates: exactly one of every pair is dropped.
  assert len(dups) == 3 and {r["id"].split("/")[1] for r in dups} == {"charset.py", "errors.py", "iterators.py"}
  assert all(r["id"].startswith(("email/", "copy/")) for r in kept)  # the classifier learnt 'email-like'
  m = json.loads((out / "manifest.json").read_text())
  assert m["totals"]["documents_in"] == n_docs and m["totals"]["documents_out"] == len(kept)
  assert m["totals"]["documents_above_cut"] == len(above)
  assert m["by_source"]["json"]["kept_fraction"] == 0 and m["by_source"]["copies"]["documents_in"] == 3
  assert m["totals"]["tokens_out"] == sum(r["meta"]["n_tokens"] for r in kept) > 0
  assert m["classifier"]["embedder"]["fingerprint"] and "f1" in m["classifier"]["metrics"]
  assert "doc/s" in log and "ETA" in log  # progress lines
  assert "| INFO" not in log and "Launching pipeline" in (out / "logs" / "datatrove.log").read_text()  # its log: a file

  before = {p: p.read_bytes() for p in (out / "data").iterdir()}
  proc = _cli(*_filter_args(inputs, base / "cls", out))  # rerun: every task is already done
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {p: p.read_bytes() for p in (out / "data").iterdir()} == before
  assert json.loads((out / "manifest.json").read_text())["resumed_finished_run"] is True
  proc = _cli(*_filter_args(inputs, base / "cls", out, "--cut=0.9"))
  assert proc.returncode == 2 and "other settings (cut)" in proc.stderr

  packed = pack(
    sorted((out / "data").glob("*.jsonl.gz")), ckpt, 32, tmp_path / "packed", eval_fraction=0.0, workers=1
  )  # the output packs as it is
  assert packed["documents"] == len(kept)


@pytest.mark.slow
def test_filter_sigkill_then_resume_loses_and_repeats_nothing(filter_setup, filtered, tmp_path):
  base, inputs, _, _ = filter_setup
  ref = filtered[0]
  out = tmp_path / "killed"
  env = repo_env(JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
    [sys.executable, "-m", "phi1_jax.curate", *_filter_args(inputs, base / "cls", out)],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  try:
    marker = out / "logs" / "score" / "completions" / "00000"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run: task 1 of the score stage is under way
  finally:
    proc.wait()
  assert not (out / "manifest.json").exists()
  proc = _cli(*_filter_args(inputs, base / "cls", out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  for folder in ("scored", "data", "duplicates"):
    assert _data_rows(out / folder) == _data_rows(ref / folder)
  a, b = (json.loads((d / "manifest.json").read_text()) for d in (ref, out))
  assert a["by_source"] == b["by_source"]


@pytest.mark.slow
def test_filter_ctrl_c_is_one_line_exit_130_and_leaves_no_process(filter_setup, tmp_path):
  """Ctrl-C reaches the whole foreground group (datatrove's forkserver and pool workers too)."""
  from phi1_jax.cli import descendants

  base, inputs, _, _ = filter_setup
  out = tmp_path / "stopped"
  env = repo_env(JAX_PLATFORMS="cpu")
  argv = [sys.executable, "-m", "phi1_jax.curate", *_filter_args(inputs, base / "cls", out, "--workers=2")]
  proc = subprocess.Popen(
    argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
  )
  workers: set[int] = set()
  try:
    deadline = time.monotonic() + 240
    while not list((out / "scored").glob("*.jsonl.gz")) and proc.poll() is None and time.monotonic() < deadline:
      workers.update(descendants(proc.pid))
      time.sleep(0.05)
    workers.update(descendants(proc.pid))
    assert proc.poll() is None, "finished before it could be stopped"
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  assert proc.returncode == 130, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
    "stopped by SIGINT: the completed tasks are kept; rerun the same command to resume"
  ), stderr[-3000:]
  assert "Traceback" not in stderr + stdout, stderr[-3000:]
  assert all(line.startswith(("curate ", "stopped by")) for line in stderr.splitlines()), stderr[-3000:]
  assert len(workers) >= 2  # the forkserver and its pool workers were seen, and none outlives the command
  deadline = time.monotonic() + 10
  while any(map(alive, workers)) and time.monotonic() < deadline:
    time.sleep(0.05)
  assert not [p for p in workers if alive(p)]


@pytest.mark.slow
def test_curation_notebook_runs_on_the_outputs(filter_setup, filtered, tmp_path):
  import nbclient
  import nbformat

  base, _, _, _ = filter_setup
  nb = nbformat.read(REPO / "notebooks" / "curation.ipynb", as_version=4)
  os.environ.update(
    CURATE_ANNOTATIONS=str(base / "annotations.jsonl"),
    CURATE_CLASSIFIER=str(base / "cls"),
    CURATE_FILTERED=str(filtered[0]),
  )
  try:
    nbclient.NotebookClient(
      nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
  finally:
    for k in ("CURATE_ANNOTATIONS", "CURATE_CLASSIFIER", "CURATE_FILTERED"):
      os.environ.pop(k)
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # histogram, PR curve, kept fractions
  assert any("kept" in o.get("data", {}).get("text/html", "") for o in outputs)


# ---------------------------------------------------------------- executors (every datatrove stage)

FAILING_STAGE = """
import sys
from pathlib import Path
from types import SimpleNamespace
from datatrove.utils.logging import logger
from phi1_jax.stages import executors

def fail(data, rank=0, world_size=1):
  logger.info("about to fail")
  raise ValueError("a step went wrong")

logs = Path(sys.argv[1])
try:
  stage = executors.Stage("boom", [fail], 1, logs / "boom")
  executors.run(SimpleNamespace(executor="local"), [stage], None, "test", logs)
except executors.StagesIncomplete as e:
  print(e)
"""


def test_datatrove_logs_to_a_file_and_a_failed_task_is_one_line_naming_it(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-c", FAILING_STAGE, str(tmp_path / "logs")],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=repo_env(),
    timeout=120,
  )
  log = tmp_path / "logs" / "datatrove.log"
  assert proc.stdout.strip() == (
    f"stage boom: a task failed (ValueError: a step went wrong); traceback in {log}; "
    "the same command again redoes only the unfinished tasks"
  ), proc.stderr
  assert proc.stderr.splitlines() == [f"test boom: 0/1 tasks done, 0 s (datatrove's log: {log})"]
  assert "about to fail" in log.read_text() and "Traceback" in log.read_text()
