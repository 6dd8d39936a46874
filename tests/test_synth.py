"""python -m phi1_jax.synth: the sampler, validation, and whole runs against a real HTTP endpoint.

The endpoint is the `endpoint` fixture: the tests' misbehaving OpenAI-compatible server with
scripted answers (tests/synth_responders.py), whose text the tests can predict. End-to-end checks
of the plumbing against `python -m phi1_jax.serve` are in test_stages_on_serve.py.
"""

import collections
import os
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from helpers import REPO, repo_env, run_module
from data_fixtures import small_tokenizer  # noqa: F401
from llm_servers import FaultyLLMServer, canonical
from phi1_jax import cli
from phi1_jax.stages import llm as llm_lib
from phi1_jax.synth import prompts, validate
from phi1_jax.synth.__main__ import main as synth_main
from synth_responders import exercise_responder, textbook_responder
from test_cli_rules import alive


@pytest.fixture
def endpoint():
  """Starts a real HTTP endpoint: endpoint(responder, **faults) -> server with .base_url."""
  servers = []

  def start(responder, **kw):
    kw.setdefault("retry_after", "0")
    servers.append(FaultyLLMServer(responder=responder, **kw).start())
    return servers[-1]

  yield start
  for server in servers:
    server.stop()


def _synth(kind, server, out, *extra, **kw):
  return run_module(
    "phi1_jax.synth",
    kind,
    f"--out={out}",
    f"--base_url={server.base_url}",
    "--model=test",
    "--concurrency=4",
    "--backoff_s=0.01",
    *extra,
    **kw,
  )


def _rows(out, kind="textbooks"):
  return [json.loads(line) for path in sorted(out.glob(f"{kind}-*.jsonl")) for line in path.open()]


def _answers_by_key(server, responder):
  """request key -> the text the server answered for it (its log holds every body it saw)."""
  return {llm_lib.request_key(e["endpoint"], e["body"]): responder(e["endpoint"], e["body"]) for e in server.log}


# ------------------------------------------------------------ sampler


def test_sampler_is_a_function_of_seed_and_index_and_covers_the_lists():
  topics, parts = prompts.load_topics(), prompts.load_parts()
  assert len(topics) >= 300 and all(len(t.subtopics) >= 3 for t in topics)
  books = [prompts.textbook_prompt(0, i, topics, parts) for i in range(10_000)]
  assert books[1234] == prompts.textbook_prompt(0, 1234, topics, parts)
  assert prompts.textbook_prompt(1, 1234, topics, parts) != books[1234]
  assert len({b["prompt"] for b in books}) >= 9_990
  assert {b["topic"] for b in books} == {t.name for t in topics}
  assert {b["audience"] for b in books} == set(parts["audiences"])
  assert {b["style"] for b in books} == set(parts["styles"])
  assert {b["opening"] for b in books} == set(parts["openings"])
  per_topic = collections.Counter(b["topic"] for b in books)
  assert max(per_topic.values()) < 3 * 10_000 / len(topics)  # no topic dominates
  exercises = [prompts.exercise_prompt(0, i, topics, parts) for i in range(10_000)]
  assert len({e["prompt"] for e in exercises}) >= 9_990
  assert len({e["function_name"] for e in exercises}) >= 0.9 * len(parts["exercise_verbs"]) * len(
    parts["exercise_nouns"]
  )
  assert len({prompts.request_seed(0, i) for i in range(10_000)}) == 10_000


def test_topics_file_errors_name_the_line(tmp_path):
  bad = tmp_path / "topics.txt"
  bad.write_text("## area\nGood topic: a; b\nno colon here\n")
  with pytest.raises(cli.UserError, match=r"topics.txt:3"):
    prompts.load_topics(bad)


# ------------------------------------------------------------ validation

GOOD_BOOK = "Lists hold items in order. " * 40 + "\n\n```python\nitems = [3, 1, 2]\nprint(sorted(items))\n```\n"


@pytest.mark.parametrize(
  "text,reason",
  [
    (GOOD_BOOK, None),
    ("I'm sorry, but I can't help with that request.", "refusal"),
    ("Sure! Here is a textbook section.\n\n" + GOOD_BOOK, "meta_boilerplate"),
    (GOOD_BOOK + "\nI hope this helps! Let me know if you have questions.", "meta_boilerplate"),
    (GOOD_BOOK[:300], "too_short"),
    (GOOD_BOOK.replace("print(sorted(items))", "print(sorted(items)"), "code_syntax_error"),
    (GOOD_BOOK + "\n```python\nx = 1\n", "unclosed_code_fence"),
    ("Lists hold items in order. " * 60, "no_code"),
    (GOOD_BOOK + "\n```pycon\n>>> x = [1]\n>>> x\n[1]\n```\n", None),
    (GOOD_BOOK + ("\nThe same long line repeated over and over again." * 30), "repetitive"),
  ],
)
def test_textbook_checks(text, reason):
  assert validate.textbook_rejection(text, "stop", min_chars=1000) == reason


def test_textbook_cut_by_max_tokens_is_rejected():
  assert validate.textbook_rejection(GOOD_BOOK, "length") == "truncated"


def _exercise(body, tests="assert add_pairs([1, 2]) == 3\nassert add_pairs([]) == 0\n", name="add_pairs"):
  return (
    f'```python\ndef {name}(values: list[int]) -> int:\n    """Return the sum of the values."""\n'
    f"{body}\n```\n\n```python\n{tests}```\n"
  )


def test_exercise_checks_run_the_tests_in_the_sandbox(tmp_path):
  cases = {
    "good": (_exercise("    total = sum(values)\n    return total"), None),
    "fails": (_exercise("    total = sum(values)\n    return total + 1"), "tests_failed"),
    "loops": (_exercise("    while True:\n        pass"), "tests_timed_out"),
    "escapes": (
      _exercise(
        f"    import os, shutil\n    os.system('touch {tmp_path}/escaped')\n"
        f"    shutil.rmtree('{tmp_path}')\n    return sum(values)"
      ),
      "tests_failed",
    ),
    "forks": (_exercise("    import os\n    while True:\n        os.fork()"), "tests_failed"),
  }
  exercises = {}
  for name, (text, _) in cases.items():
    exercises[name], reason = validate.parse_exercise(text, "add_pairs")
    assert reason is None, name
  reasons = validate.check_exercises(list(exercises.values()), timeout_s=1.0, workers=2)
  assert dict(zip(cases, reasons)) == {name: reason for name, (_, reason) in cases.items()}
  assert tmp_path.is_dir() and not (tmp_path / "escaped").exists()
  good = exercises["good"]
  assert good["prompt"].endswith('"""Return the sum of the values."""\n')
  assert (
    good["solution"] == "    total = sum(values)\n    return total\n"
    and "assert" not in good["prompt"] + good["solution"]
  )


@pytest.mark.parametrize(
  "text,reason",
  [
    (_exercise("    return sum(values)").replace("int:\n", "int\n", 1), "syntax_error"),
    (_exercise("    return sum(values)", name="other_name"), "wrong_function_name"),
    (_exercise("    return sum(values)").replace('    """Return the sum of the values."""\n', ""), "no_docstring"),
    (_exercise("    return sum(values)", tests="print('no asserts')\n"), "no_tests"),
    ("```python\ndef add_pairs(values):\n    return 1\n```", "not_two_code_blocks"),
    ("I'm sorry, I cannot help with that.", "refusal"),
  ],
)
def test_exercise_parse_rejections(text, reason):
  assert validate.parse_exercise(text, "add_pairs") == (None, reason)


# ------------------------------------------------------------ command line


@pytest.mark.parametrize(
  "args,message",
  [
    (["--n=0"], "--n must be >= 1"),
    (["--n=5", "--base_url=ftp://x"], "--base_url 'ftp://x'"),
    (["--n=5", "--topics=/nonexistent/topics.txt"], "--topics /nonexistent/topics.txt: not found"),
    (["--n=5", "--tasks=6"], "--tasks (6) must not exceed --n (5)"),
    (["--n=5", "--give_up_after=0"], "--give_up_after must be > 0"),
    (["--n=5", "--template=TEMPLATE"], "unusable field"),
  ],
)
def test_bad_flags_stop_with_one_line(tmp_path, capsys, args, message):
  (tmp_path / "template.txt").write_text("Write about {topic} for {reader}.")
  args = [a.replace("TEMPLATE", str(tmp_path / "template.txt")) for a in args]
  argv = ["textbooks", f"--out={tmp_path / 'out'}", "--base_url=http://127.0.0.1:9/v1", "--model=m", *args]
  assert synth_main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("python -m phi1_jax.synth textbooks: error: ") and message in err and len(err.splitlines()) == 1
  assert not (tmp_path / "out").exists()


def test_a_folder_of_something_else_is_not_touched(tmp_path, capsys):
  (tmp_path / "notes.txt").write_text("mine")
  argv = ["textbooks", f"--out={tmp_path}", "--base_url=http://127.0.0.1:9/v1", "--model=m", "--n=3"]
  assert synth_main(argv) == 2
  assert "not empty" in capsys.readouterr().err and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ------------------------------------------------------------ whole runs


def test_textbooks_on_a_misbehaving_endpoint_then_a_rerun_pays_nothing(endpoint, tmp_path, capsys):
  server = endpoint(textbook_responder, fault_rate=0.25, seed=5)
  out = tmp_path / "books"
  result = _synth("textbooks", server, out, "--n=30", "--seed=9")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(out)
  assert len(rows) == 30 and len({r["id"] for r in rows}) == 30
  answers = _answers_by_key(server, textbook_responder)
  for row in rows:  # each document is exactly one answer the endpoint gave
    assert row["source"] == "synthetic_textbook" and row["text"] == answers[row["meta"]["request_key"]].strip() + "\n"
    assert {"topic", "audience", "style", "prompt_sha256", "model", "usage"} <= set(row["meta"])
  assert set(server.paid_keys().values()) == {1}
  assert sum(server.outcomes()[f] for f in ("429", "500", "503", "drop", "reset", "garbage", "no_choices")) > 0
  manifest = json.loads((out / "manifest.json").read_text())
  counts = manifest["counts"]
  assert manifest["complete"] and counts["written"] == 30
  assert {"refusal", "code_syntax_error", "near_duplicate"} <= set(counts["rejected"])
  assert counts["prompts"] == 30 + sum(counts["rejected"].values()) + counts["unused_answers"]
  assert manifest["spend"]["cache"]["answers"] == len(server.paid_keys())
  diversity = manifest["diversity"]
  assert diversity["documents"] == 30 and diversity["topics_covered"] >= 25
  assert 0 <= diversity["mean_pairwise_minhash_similarity"] < 0.2 and diversity["distinct_3gram_ratio"] > 0.5
  assert "diversity:" in result.stdout

  requests_before = len(server.log)
  argv = ["textbooks", f"--out={out}", f"--base_url={server.base_url}", "--model=test", "--seed=9"]
  assert synth_main([*argv, "--n=30"]) == 0 and "nothing to do" in capsys.readouterr().out
  (out / "manifest.json").unlink()  # even a run that must redo its manifest asks nothing
  assert _synth("textbooks", server, out, "--n=30", "--seed=9").returncode == 0
  assert len(server.log) == requests_before and _rows(out) == rows
  assert synth_main([*argv, "--n=31"]) == 2 and "differs in n" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_rerun_writes_what_an_unbroken_run_writes_and_pays_nothing_twice(endpoint, tmp_path):
  reference = tmp_path / "reference"
  server = endpoint(textbook_responder)
  assert _synth("textbooks", server, reference, "--n=24").returncode == 0
  server = endpoint(textbook_responder, delay_s=0.05, fault_rate=0.1, seed=2)
  out = tmp_path / "killed"
  args = [
    sys.executable,
    "-m",
    "phi1_jax.synth",
    "textbooks",
    "--n=24",
    f"--out={out}",
    f"--base_url={server.base_url}",
    "--model=test",
    "--concurrency=4",
    "--backoff_s=0.01",
  ]
  run = subprocess.Popen(args, cwd=REPO, env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  while len(server.paid_keys()) < 12 and time.monotonic() < deadline:
    time.sleep(0.01)
  started = cli.descendants(run.pid)  # datatrove's multiprocess manager: nothing kills it after a SIGKILL
  run.send_signal(signal.SIGKILL)
  assert run.wait() == -signal.SIGKILL
  _kill(run, started)
  with sqlite3.connect(out / "llm_cache.sqlite") as db:
    committed = {canonical(json.loads(body)) for (body,) in db.execute("SELECT request FROM answers")}
  assert committed and not (out / "manifest.json").exists()
  log_before = len(server.log)
  result = _synth("textbooks", server, out, "--n=24")
  assert result.returncode == 0, result.stderr[-3000:]
  asked_again = {canonical(e["body"]) for e in server.log[log_before:]}
  assert not committed & asked_again  # nothing received before the kill is asked for again
  assert _rows(out) == _rows(reference)  # exactly n documents, the same ones


@pytest.mark.slow
def test_token_cap_stops_cleanly_then_a_higher_cap_finishes(endpoint, tmp_path):
  server = endpoint(textbook_responder)
  out = tmp_path / "capped"
  result = _synth("textbooks", server, out, "--n=20", "--max_tokens_total=4000", "--concurrency=2")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "cap --max_tokens_total=4000" in result.stdout and "stopped by --max_tokens_total" in result.stdout
  manifest = json.loads((out / "manifest.json").read_text())
  kept = _rows(out)
  assert not manifest["complete"] and 0 < len(kept) < 20 == manifest["counts"]["requested"]
  assert manifest["counts"]["written"] == len(kept) and manifest["tokens"]["completion_tokens_paid"] > 0
  paid_so_far = len(server.paid_keys())
  result = _synth("textbooks", server, out, "--n=20")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(out)
  assert len(rows) == 20 and rows[: len(kept)] == kept
  assert len(server.paid_keys()) > paid_so_far and set(server.paid_keys().values()) == {1}
  assert json.loads((out / "manifest.json").read_text())["complete"]


@pytest.mark.slow
def test_exercises_keep_only_what_passes_its_own_tests_and_pack(endpoint, tmp_path, small_tokenizer):
  server = endpoint(exercise_responder, fault_rate=0.2, seed=4)
  out = tmp_path / "exercises"
  result = _synth("exercises", server, out, "--n=10", "--exec_timeout=1")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = _rows(out, "exercises")
  assert len(rows) == 10 and set(server.paid_keys().values()) == {1}
  for row in rows:
    meta = row["meta"]
    assert row["source"] == "synthetic_exercise" and "assert" not in row["text"]
    assert row["text"][: meta["prompt_chars"]].endswith('"""\n') and f"def {meta['function_name']}(" in row["text"]
  programs = [row["text"] + "\n" + row["meta"]["tests"] for row in rows]
  assert all(r.passed for r in validate.runner.execute_programs(programs, timeout_s=2, workers=2))
  manifest = json.loads((out / "manifest.json").read_text())
  assert {"syntax_error", "tests_failed"} <= set(manifest["counts"]["rejected"])
  assert manifest["exercises"]["passed_own_tests"] == 10 + manifest["counts"]["rejected"].get("near_duplicate", 0)
  assert 0 < manifest["exercises"]["pass_rate"] < 1
  # The output folder is finetuning data as it is: phi1_jax.data.pack reads its documents and nothing else.
  from phi1_jax.data.pack import pack

  packed = pack([out], small_tokenizer, 32, tmp_path / "packed", workers=1)
  assert packed["splits"]["train"]["documents"] + packed["splits"]["eval"]["documents"] == 10
  assert packed["bad"]["count"] == 0, packed["bad"]


@pytest.mark.slow
def test_two_tasks_on_two_workers_split_the_documents(endpoint, tmp_path):
  server = endpoint(textbook_responder)
  out = tmp_path / "two"
  result = _synth("textbooks", server, out, "--n=9", "--tasks=2", "--workers=2")
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = json.loads((out / "manifest.json").read_text())
  assert [o["documents"] for o in manifest["outputs"]] == [5, 4] and manifest["complete"]
  rows = _rows(out)
  assert len({r["id"] for r in rows}) == 9 and {r["meta"]["prompt_index"] % 2 for r in rows[:5]} == {0}


def test_a_refused_key_stops_the_run_with_one_line(endpoint, tmp_path, capsys):
  server = endpoint(textbook_responder, fault_for=lambda endpoint, body: "401")
  argv = ["textbooks", f"--out={tmp_path / 'out'}", f"--base_url={server.base_url}", "--model=m", "--n=3"]
  assert synth_main(argv) == 2
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert (
    last.startswith("python -m phi1_jax.synth textbooks: error: HTTP 401 from http://127.0.0.1:")
    and len(server.log) <= 3
  )
  assert "Traceback" not in err  # the task stops; it does not raise through datatrove's logger
  assert not list((tmp_path / "out" / ".synth" / "logs" / "completions").glob("*"))  # a rerun tries again


@pytest.mark.slow
def test_failed_requests_are_named_in_the_summary_line_and_the_manifest(endpoint, tmp_path):
  def too_long(endpoint, body):  # a quarter of the prompts do not fit the model's context, as a server says it
    words = len(body["messages"][0]["content"].split())
    return (
      f"400:this model's maximum context length is 128 tokens, but {words} were requested" if words % 4 == 0 else None
    )

  server = endpoint(textbook_responder, fault_for=too_long)
  out = tmp_path / "books"
  result = _synth("textbooks", server, out, "--n=6")
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = json.loads((out / "manifest.json").read_text())
  failed = manifest["counts"]["rejected"]["request_failed"]
  assert failed > 0 and sum(manifest["llm"]["failures"].values()) == failed
  reason = f"HTTP 400 from {server.base_url}: this model's maximum context length is 128 tokens, but "
  summary = next(line for line in result.stdout.splitlines() if line.startswith("synth: wrote"))
  assert summary.startswith("synth: wrote 6/6 textbooks") and f"(failed requests: {failed} x {reason}" in summary
  assert f"llm: a request failed: {reason}" in result.stdout  # as it happens, once


def _popen_synth(server, out, *extra, sigint_ignored=False):
  """A synth run in the background; `sigint_ignored`: started as `command &` in a script starts it."""
  args = [
    sys.executable,
    "-m",
    "phi1_jax.synth",
    "textbooks",
    f"--out={out}",
    f"--base_url={server.base_url}",
    "--model=test",
    "--concurrency=4",
    "--backoff_s=0.05",
    *extra,
  ]
  stderr = open(out.parent / f"{out.name}.stderr", "w+")
  ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
  return subprocess.Popen(
    args,
    cwd=REPO,
    env=repo_env(),
    stdout=subprocess.DEVNULL,
    stderr=stderr,
    preexec_fn=ignore,
  ), stderr


def _kill(run, started=()):
  """SIGKILL a synth run and all it started: a failing test leaves no process behind."""
  for pid in [*cli.descendants(run.pid), run.pid, *started]:
    try:
      os.kill(pid, signal.SIGKILL)
    except OSError:
      pass
  run.wait()


def _wait_for_answers(server, run, count):
  deadline = time.monotonic() + 120
  while len(server.paid_keys()) < count and time.monotonic() < deadline and run.poll() is None:
    time.sleep(0.01)
  assert len(server.paid_keys()) >= count, "the run did not get going"


def _committed(out):
  with sqlite3.connect(out / "llm_cache.sqlite") as db:
    return {canonical(json.loads(body)) for (body,) in db.execute("SELECT request FROM answers")}


def _rerun_resumes(server, out, n, *extra):
  """The same command again finishes, asking for nothing it received before."""
  committed, log_before = _committed(out), len(server.log)
  result = _synth("textbooks", server, out, f"--n={n}", *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  assert committed and not committed & {canonical(e["body"]) for e in server.log[log_before:]}
  assert len(_rows(out)) == n and json.loads((out / "manifest.json").read_text())["complete"]


@pytest.mark.slow
def test_an_endpoint_that_dies_mid_run_ends_the_run_in_one_line_then_a_rerun_resumes(endpoint, tmp_path):
  server = endpoint(textbook_responder, delay_s=0.05)
  out = tmp_path / "books"
  run, stderr = _popen_synth(server, out, "--n=60", "--give_up_after=2")
  try:
    _wait_for_answers(server, run, 8)
    server.die()  # connections refused from now on
    died = time.monotonic()
    assert run.wait(timeout=60) == 2
    assert time.monotonic() - died < 2 + 8  # the window, then at most a try's round trip and the exit
  finally:
    _kill(run)
  stderr.seek(0)
  err = stderr.read()
  last = err.strip().splitlines()[-1]
  assert (
    last.startswith(f"python -m phi1_jax.synth textbooks: error: every request to {server.base_url} failed for ")
    and "--give_up_after=2" in last
  )
  assert "the last with: connection" in last and "Traceback" not in err
  port = int(server.base_url.split(":")[2].split("/")[0])
  _rerun_resumes(endpoint(textbook_responder, port=port), out, 60)


@pytest.mark.slow
@pytest.mark.parametrize(
  "sig,workers,sigint_ignored",
  [(signal.SIGINT, 1, True), (signal.SIGTERM, 1, False), (signal.SIGINT, 2, False)],
  ids=["SIGINT-started-in-background", "SIGTERM", "SIGINT-2-workers"],
)
def test_a_signal_stops_synth_in_one_line_leaving_no_process_then_a_rerun_resumes(
  endpoint, tmp_path, sig, workers, sigint_ignored
):
  server = endpoint(textbook_responder, delay_s=0.5)
  out = tmp_path / "books"
  parallel = [f"--tasks={workers}", f"--workers={workers}"]
  run, stderr = _popen_synth(server, out, "--n=100", *parallel, sigint_ignored=sigint_ignored)
  started = []
  try:
    _wait_for_answers(server, run, 8)
    started += cli.descendants(run.pid)  # the multiprocess manager; with workers, the pool and its forkserver
    assert len(started) >= (1 if workers == 1 else 3)
    before = stderr.tell()
    run.send_signal(sig)
    stopped = time.monotonic()
    assert run.wait(timeout=30) == 130
    assert time.monotonic() - stopped < 5
  finally:
    _kill(run)
  deadline = time.monotonic() + 5
  while any(map(alive, started)) and time.monotonic() < deadline:
    time.sleep(0.05)
  outlived = [pid for pid in started if alive(pid)]
  _kill(run, outlived)
  assert not outlived, "a process outlived the command"
  stderr.seek(before)
  after = stderr.read()
  assert after.strip().splitlines()[-1] == (
    f"stopped by {sig.name}: every answer received is kept (llm_cache.sqlite); rerun the same command to resume"
  )
  assert "Traceback" not in after and after.count("stopped by") == 1
  server.delay_s = 0
  _rerun_resumes(server, out, 100, *parallel)
