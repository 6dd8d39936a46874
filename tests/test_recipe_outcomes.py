"""phi1_jax.recipe.outcomes on real stage outputs: each stage run small for real (tokenizer, pack,
decontam, curate annotate against the rule-based judge, synth against a faulty endpoint, a few
trainer steps and an eval), its numbers checked against what the files or the endpoint show, and
partial or missing folders giving None instead of a crash."""

import json
import math
from pathlib import Path

import pytest

from curate_fixtures import rule_judge
from data_fixtures import code_docs, read_records, write_jsonl
from helpers import STDLIB, metric_rows, run_module, train_args
from llm_servers import FaultyLLMServer, prompt_text
from phi1_jax.data import pack
from phi1_jax.data.tokenizer import train_tokenizer
from phi1_jax.eval.problems import load_humaneval
from phi1_jax.recipe import outcomes, steps
from synth_responders import exercise_responder, textbook_responder


def _server_spend(server, responder) -> tuple[int, int]:
  """(answers the endpoint delivered in full, their prompt + completion tokens as it counts them)."""
  paid = [e for e in server.log if e["outcome"] == "ok"]
  tokens = sum(
    max(1, len(prompt_text(e["endpoint"], e["body"])) // 4) + max(1, len(responder(e["endpoint"], e["body"])) // 4)
    for e in paid
  )
  return len(paid), tokens


def test_every_command_has_an_outcome_and_a_missing_folder_gives_none(tmp_path):
  assert set(outcomes.READERS) == set(steps.COMMANDS)
  for command in steps.COMMANDS:
    found = outcomes.outcome(command, tmp_path / "never-ran")
    assert found and all(isinstance(v, int | float | str | bool | type(None)) for v in found.values()), command
    usage = {k: found.pop(k) for k in ("llm_requests", "llm_tokens") if k in found}
    assert found == dict.fromkeys(found) and set(usage.values()) <= {0}, command  # no LLM paid for here
  assert outcomes.llm_usage(tmp_path) == {"llm_requests": 0, "llm_tokens": 0}  # no LLM was paid for here
  with pytest.raises(ValueError, match="no outcome for command 'train2'"):
    outcomes.outcome("train2", tmp_path)


def test_tokenizer_pack_and_decontam_outcomes(tmp_path):
  problem = load_humaneval()["HumanEval/0"]
  docs = code_docs(30) + [
    {"id": "leak", "text": problem.prompt + problem.canonical_solution, "source": "t", "meta": {}}
  ]
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  write_jsonl(corpus / "docs.jsonl", docs)
  tok = tmp_path / "tok"
  train_tokenizer([STDLIB / "json"], 400, tok)
  sentences = json.loads((tok / "manifest.json").read_text())["sentences_used"]
  found = outcomes.outcome("data.tokenizer train", tok)
  assert found == {"vocab_size": 400, "eos_id": 0, "sentences_used": sentences, "inputs": 1} and sentences > 0

  decontam = tmp_path / "decontam"
  proc = run_module(
    "phi1_jax.decontam",
    "--input",
    str(corpus),
    f"--out={decontam}",
    "--benchmarks=humaneval",
    "--tasks=1",
    "--workers=1",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = outcomes.outcome("decontam", decontam)
  removed = [json.loads(line)["id"] for line in (decontam / "removed.jsonl").read_text().splitlines()]
  assert removed == ["leak"]
  assert found["documents_read"] == 31 and found["documents_removed"] == 1 and found["documents_kept"] == 30
  assert found["kept/corpus"] == 30 and sum(v for k, v in found.items() if k.startswith("removed/")) == 1

  packed = tmp_path / "packed"
  pack.pack([decontam / "clean" / "corpus"], tok, 32, packed, eval_fraction=0.2, workers=1)
  found = outcomes.outcome("data.pack", packed)
  train, held_out = read_records(packed, "train"), read_records(packed, "eval")
  assert found["records_train"] == len(train) > 0 and found["records_eval"] == len(held_out) > 0
  assert found["tokens"] == sum(len(r) - 1 for r in train)  # the targets one epoch trains on
  assert found["tokens_eval"] == sum(len(r) - 1 for r in held_out) and found["seq_len"] == 32
  assert found["documents"] == 30 == found["documents_train"] + found["documents_eval"]
  assert found["stream_tokens_train"] >= found["tokens"] + 1

  (packed / "manifest.json").write_text('{"seq_len": 32, "records": ')  # cut short: no crash, no numbers
  assert outcomes.outcome("data.pack", packed)["tokens"] is None


def test_annotate_outcome_counts_what_the_endpoint_was_paid(tmp_path):
  out = tmp_path / "annotations"
  with FaultyLLMServer(responder=rule_judge, retry_after="0") as server:
    server.add_faults("500", "drop", "429")  # retried: sent more often than paid for
    proc = run_module(
      "phi1_jax.curate",
      "annotate",
      "--input",
      str(STDLIB / "json"),
      f"--out={out}",
      f"--base_url={server.base_url}",
      "--model=rules",
      "--backoff_s=0.01",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
  found = outcomes.outcome("curate annotate", out)
  assert found["annotated"] == len(rows) == found["documents"] and found["remaining"] == 0
  for score in range(6):
    assert found[f"score_{score}"] == sum(r["score"] == score for r in rows)
  assert (found["llm_requests"], found["llm_tokens"]) == _server_spend(server, rule_judge)
  assert found["llm_requests_sent_last_run"] == len(server.log) > found["llm_requests"]  # faults were retried


@pytest.mark.parametrize("kind, responder", [("textbooks", textbook_responder), ("exercises", exercise_responder)])
def test_synth_outcome_counts_written_rejected_and_paid(tmp_path, kind, responder):
  out = tmp_path / kind
  with FaultyLLMServer(responder=responder, fault_rate=0.2, seed=1, retry_after="0") as server:
    proc = run_module(
      "phi1_jax.synth", kind, "--n=6", f"--out={out}", f"--base_url={server.base_url}", "--model=t", "--backoff_s=0.01"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
  found = outcomes.outcome(f"synth {kind}", out)
  written = sum(1 for path in out.glob(f"{kind}-*.jsonl") for _ in path.open())
  assert found["written"] == written == 6 and found["complete"] is True
  rejected = {k: v for k, v in found.items() if k.startswith("rejected/")}
  assert found["rejected"] == sum(rejected.values()) and found["answers_received"] >= written + found["rejected"]
  assert (found["llm_requests"], found["llm_tokens"]) == _server_spend(server, responder)
  assert found["llm_requests_sent_last_run"] == len(server.log)
  if kind == "exercises":
    assert found["passed_own_tests"] >= 6 and 0 < found["pass_rate"] <= 1
  # the answers cache unreadable: its numbers are None, the rest still there
  (out / "llm_cache.sqlite").write_bytes(b"not a database" * 100)
  for extra in ("-wal", "-shm"):
    Path(f"{out / 'llm_cache.sqlite'}{extra}").unlink(missing_ok=True)
  broken = outcomes.outcome(f"synth {kind}", out)
  assert broken["llm_requests"] is None and broken["llm_tokens"] is None and broken["written"] == 6


@pytest.mark.slow
def test_train_and_eval_outcomes(tmp_path, stdlib_cache):
  workdir = tmp_path / "run"
  proc = run_module(
    "phi1_jax.train",
    *train_args(workdir, stdlib_cache, "--config.total_steps=4", "--config.eval_every=2", "--config.eval_batches=1"),
    env={"JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = metric_rows(workdir)
  found = outcomes.outcome("train", workdir)
  assert found["final_step"] == 4 and found["final_loss"] == rows[-1]["loss"]
  assert found["eval_step"] == 4 and found["final_eval_loss"] == rows[-1]["eval_loss"]
  assert found["tokens_seen"] == 4 * 4 * 128 and found["batch_size"] == 4 and found["seq_len"] == 128
  assert 0 < found["train_seconds"] < 600

  out = tmp_path / "eval"
  proc = run_module(
    "phi1_jax.eval",
    f"--checkpoint={workdir}",
    "--benchmark=humaneval",
    "--limit=2",
    "--max_new_tokens=8",
    "--canonical_loss",
    f"--out={out}",
    "--workers=2",
    env={"JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  found = outcomes.outcome("eval", out)
  assert found["benchmark"] == "humaneval" and found["problems"] == 2 and found["n_samples"] == 1
  assert found["pass@1"] == 0.0 and found["canonical_loss_problems"] == 2
  assert math.isfinite(found["canonical_loss"]) and found["canonical_loss"] > 0
  assert found["llm_requests"] == 0 and found["llm_tokens"] == 0
  (out / "summary.json").unlink()  # an evaluation cut short: no numbers, no crash
  assert outcomes.outcome("eval", out)["pass@1"] is None


@pytest.mark.slow
def test_embed_classifier_and_filter_outcomes(tmp_path):
  import gzip

  from sklearn.metrics import f1_score, precision_score, recall_score

  from curate_fixtures import make_checkpoint

  inputs = [str(STDLIB / "json"), str(STDLIB / "http")]
  ckpt = make_checkpoint(tmp_path / "ckpt")
  with FaultyLLMServer(responder=rule_judge, retry_after="0") as server:
    annotate = ["annotate", "--input", *inputs, "--sample=20", f"--out={tmp_path / 'ann'}"]
    proc = run_module("phi1_jax.curate", *annotate, f"--base_url={server.base_url}", "--model=rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
  stages = [
    ["embed", "--input", *inputs, "--sample=20", f"--checkpoint={ckpt}", "--max_len=128", f"--out={tmp_path / 'emb'}"],
    [
      "train-classifier",
      f"--annotations={tmp_path / 'ann'}",
      f"--embeddings={tmp_path / 'emb'}",
      f"--out={tmp_path / 'cls'}",
    ],
    ["filter", "--input", *inputs, f"--classifier={tmp_path / 'cls'}", f"--out={tmp_path / 'filtered'}", "--tasks=2"],
  ]
  for args in stages:
    proc = run_module("phi1_jax.curate", *args, env={"JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]

  found = outcomes.outcome("curate embed", tmp_path / "emb")
  ids = [line for path in (tmp_path / "emb").glob("ids-*.txt") for line in path.read_text().splitlines()]
  assert found["documents"] == len(ids) == found["documents_embedded_last_run"] > 0 and found["dim"] == 32

  found = outcomes.outcome("curate train-classifier", tmp_path / "cls")
  info = json.loads((tmp_path / "cls" / "model_info.json").read_text())
  preds = [json.loads(line) for line in (tmp_path / "cls" / "test_predictions.jsonl").read_text().splitlines()]
  truth = [p["label"] for p in preds]
  guess = [p[f"prob_{found['model']}"] >= info["cut"] for p in preds]
  assert found["held_out"] == len(preds) and found["held_out_positives"] == sum(truth)
  assert found["precision"] == pytest.approx(precision_score(truth, guess, zero_division=0))
  assert found["recall"] == pytest.approx(recall_score(truth, guess, zero_division=0))
  assert found["f1"] == pytest.approx(f1_score(truth, guess, zero_division=0))
  assert 0 <= found["roc_auc"] <= 1

  found = outcomes.outcome("curate filter", tmp_path / "filtered")
  kept = sum(1 for path in (tmp_path / "filtered" / "data").glob("*.jsonl.gz") for _ in gzip.open(path, "rt"))
  assert found["documents_kept"] == kept and 0 < found["documents_read"]
  assert found["documents_kept"] <= found["documents_read"] and found["tokens_kept"] <= found["tokens_read"]
  assert found["kept_fraction"] == pytest.approx(kept / found["documents_read"])
