"""Decontamination: look-alikes of HumanEval / MBPP removed with the right task, ordinary code kept."""

import ast
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import repo_env, run_module
from data_fixtures import small_tokenizer  # noqa: F401
from phi1_jax.decontam import __main__ as cli, benchmarks as bench_lib, fixture as fixture_lib, index as index_lib
from phi1_jax.decontam import tree as tree_lib

# shared/ sits beside the repository (CI) or further up (a worktree); the nearest one is used
MBPP_PATH = next(
  (
    p / "shared/data/mbpp/mbpp.jsonl"
    for p in Path(__file__).resolve().parents[1:]
    if (p / "shared/data/mbpp/mbpp.jsonl").is_file()
  ),
  Path("shared/data/mbpp/mbpp.jsonl"),
)
BENCH_FLAGS = (
  ["--benchmarks=humaneval,mbpp", f"--mbpp_path={MBPP_PATH}"] if MBPP_PATH.is_file() else ["--benchmarks=humaneval"]
)
NEGATIVES = 150


def _refs():
  return bench_lib.load(
    ["humaneval", "mbpp"] if MBPP_PATH.is_file() else ["humaneval"], MBPP_PATH if MBPP_PATH.is_file() else None
  )[0]


def _read_jsonl(path: Path) -> list[dict]:
  opener = gzip.open if path.name.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def decontaminated(tmp_path_factory):
  """The labelled fixture (6 problems per benchmark, 150 vocabulary-sharing stdlib functions, a bad
  line) decontaminated by the CLI with its defaults, 2 tasks on a local pool of 2 workers."""
  base = tmp_path_factory.mktemp("decontam")
  refs = _refs()
  docs = fixture_lib.build(refs, per_benchmark=6, n_negatives=NEGATIVES, stdlib_bytes=2_000_000)
  fixture = base / "fixture.jsonl"
  fixture.write_text("".join(json.dumps(d) + "\n" for d in docs) + "{not json\n", encoding="utf-8")
  out = base / "out"
  proc = run_module(
    "phi1_jax.decontam", "--input", str(fixture), f"--out={out}", *BENCH_FLAGS, "--tasks=2", "--workers=2", timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  index = index_lib.BenchmarkIndex(refs, index_lib.Thresholds())
  return {"docs": docs, "fixture": fixture, "out": out, "stdout": proc.stdout, "index": index}


def test_defaults_remove_lookalikes_naming_the_task_and_keep_ordinary_code(decontaminated):
  out, docs, index = decontaminated["out"], decontaminated["docs"], decontaminated["index"]
  removed = {row["id"]: row for row in _read_jsonl(out / "removed.jsonl")}
  kept = {d["id"]: d for shard in sorted((out / "clean").rglob("*.jsonl.gz")) for d in _read_jsonl(shard)}
  checked = {}
  for doc in docs:
    expect, kind = doc["meta"]["expect"], doc["meta"]["kind"]
    if kind == "stdlib":
      assert doc["id"] in kept and doc["id"] not in removed, removed.get(doc["id"])
    elif kind == "prompt" or (kind in ("renamed", "reordered") and expect in index.ast_tasks):
      row = removed.get(doc["id"])
      assert row is not None, f"{doc['id']} kept:\n{doc['text']}"
      assert row["task_id"] == expect, row
      assert row["method"] == ("exact" if kind == "prompt" else "ast"), row
    checked[kind] = checked.get(kind, 0) + 1
  problems = 12 if MBPP_PATH.is_file() else 6
  assert checked["stdlib"] == NEGATIVES and checked["prompt"] == problems and checked["renamed"] == problems, checked
  assert checked.get("reordered", 0) >= 1, checked
  # kept documents are exactly the input's, in the format pack reads
  for doc_id, doc in kept.items():
    original = next(d for d in docs if d["id"] == doc_id)
    assert doc == {k: original[k] for k in ("id", "text", "source", "meta")}
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["documents"] == len(docs) and manifest["bad"] == 1
  assert manifest["kept"] == len(kept) and manifest["removed"] == len(removed)
  assert manifest["kept"] + manifest["removed"] == len(docs)


def test_report_has_each_method_nearest_document_and_table3(decontaminated):
  out, docs = decontaminated["out"], decontaminated["docs"]
  report = json.loads((out / "report.json").read_text())
  prompt_doc = next(d for d in docs if d["meta"]["kind"] == "prompt")
  nearest = report["problems"][prompt_doc["meta"]["expect"]]
  assert nearest["exact"] == {"score": 1.0, "id": prompt_doc["id"]}
  assert nearest["ngram"]["score"] >= 1 and nearest["embed"] is None  # no embedder given
  renamed = [
    d for d in docs if d["meta"]["kind"] == "renamed" and d["meta"]["expect"] in decontaminated["index"].ast_tasks
  ]
  assert all(report["problems"][d["meta"]["expect"]]["ast"]["score"] == 1.0 for d in renamed)
  rows = [r for r in report["table3"] if r["benchmark"] == "humaneval"]
  assert [r["tau"] for r in rows] == [0.95, 0.9, 0.85, 0.8]
  similar = {
    t for t, p in report["problems"].items() if t.startswith("HumanEval/") and p["ast"] and p["ast"]["score"] >= 0.9
  }
  row = rows[1]
  assert row["similar"] == len(similar) > 0 and row["similar"] + row["non_similar"] == 164
  assert "## Table 3" in (out / "report.md").read_text()


def test_results_file_splits_pass_at_1_into_similar_and_non_similar(decontaminated, tmp_path):
  out = decontaminated["out"]
  report = json.loads((out / "report.json").read_text())
  similar = {
    t for t, p in report["problems"].items() if t.startswith("HumanEval/") and p["ast"] and p["ast"]["score"] >= 0.95
  }
  # the eval's results file: one row per sample; similar problems pass 2 of 2, others 1 of 2
  rows = [
    {"task_id": f"HumanEval/{i}", "completion": "", "passed": s == 0 or f"HumanEval/{i}" in similar, "result": ""}
    for i in range(164)
    for s in range(2)
  ]
  results = tmp_path / "samples.jsonl_results.jsonl"
  results.write_text("".join(json.dumps(r) + "\n" for r in rows))
  manifest_before = (out / "manifest.json").read_text()
  proc = run_module(
    "phi1_jax.decontam",
    "--input",
    str(decontaminated["fixture"]),
    f"--out={out}",
    *BENCH_FLAGS,
    "--tasks=2",
    "--workers=2",
    f"--results={tmp_path}",
  )  # the eval's --out folder
  assert proc.returncode == 0, proc.stderr[-2000:]
  row = next(
    r
    for r in json.loads((out / "report.json").read_text())["table3"]
    if r["benchmark"] == "humaneval" and r["tau"] == 0.95
  )
  assert row["pass@1_similar"] == 100.0 and row["pass@1_non_similar"] == 50.0
  assert row["scored_similar"] == len(similar)
  assert (out / "manifest.json").read_text() == manifest_before  # the scan was not redone


@pytest.mark.slow
def test_rerun_does_nothing_and_a_killed_run_resumes_with_nothing_lost_or_doubled(decontaminated, tmp_path, capsys):
  out = decontaminated["out"]
  args = ["--input", str(decontaminated["fixture"]), f"--out={out}", *BENCH_FLAGS, "--tasks=2", "--workers=2"]
  stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
  proc = run_module("phi1_jax.decontam", *args)
  assert proc.returncode == 0 and "nothing to do" in proc.stderr
  assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

  # SIGKILL (the whole process group: datatrove's manager too) once the first of 8 tasks completed
  killed = tmp_path / "killed"
  argv = [
    sys.executable,
    "-m",
    "phi1_jax.decontam",
    "--input",
    str(decontaminated["fixture"]),
    f"--out={killed}",
    *BENCH_FLAGS,
    "--tasks=8",
    "--workers=1",
  ]
  env = repo_env()
  proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
  first = killed / "work/logs/completions/00000"
  deadline = time.time() + 120
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  os.killpg(proc.pid, signal.SIGSTOP)  # frozen, it keeps its lock: the check below cannot race its end
  assert proc.poll() is None, "the run finished before it could be killed"
  assert cli.main(argv[3:]) == 2  # a second run on the same --out while the first runs: refused
  assert "another decontamination run" in capsys.readouterr().err
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "manifest.json").exists() and not (killed / "work/logs/completions/00007").exists()
  task0 = (killed / "work/stats/00000.json").stat().st_mtime_ns
  proc = run_module("phi1_jax.decontam", *argv[3:])
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (killed / "work/stats/00000.json").stat().st_mtime_ns == task0  # the completed task was not redone

  # the same documents kept and removed as the uninterrupted run, each once
  def ids(folder):
    removed = [r["id"] for r in _read_jsonl(folder / "removed.jsonl")]
    kept = [d["id"] for p in sorted((folder / "clean").rglob("*.jsonl.gz")) for d in _read_jsonl(p)]
    return sorted(removed), sorted(kept)

  assert ids(killed) == ids(out)
  assert len(set(ids(killed)[1])) == len(ids(killed)[1])


def test_bad_inputs_end_in_one_line_and_exit_2(decontaminated, tmp_path, capsys):
  fixture, out = str(decontaminated["fixture"]), decontaminated["out"]
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  cases = {
    "not found": ["--input", str(tmp_path / "missing.jsonl"), f"--out={tmp_path / 'o1'}", "--benchmarks=humaneval"],
    "unknown benchmark": ["--input", fixture, f"--out={tmp_path / 'o2'}", "--benchmarks=humaneval,apps"],
    "--mbpp_path": ["--input", fixture, f"--out={tmp_path / 'o3'}", "--benchmarks=mbpp"],
    "--ast_tau": ["--input", fixture, f"--out={tmp_path / 'o4'}", "--benchmarks=humaneval", "--ast_tau=1.5"],
    "refusing to overwrite": ["--input", fixture, f"--out={foreign}", "--benchmarks=humaneval"],
    "other inputs/benchmarks/flags": ["--input", fixture, f"--out={out}", *BENCH_FLAGS, "--ngram=8"],
    "--results": [
      "--input",
      fixture,
      f"--out={tmp_path / 'o5'}",
      "--benchmarks=humaneval",
      f"--results={tmp_path / 'none.jsonl'}",
    ],
    "--embed_checkpoint": [
      "--input",
      fixture,
      f"--out={tmp_path / 'o6'}",
      "--benchmarks=humaneval",
      f"--embed_checkpoint={tmp_path / 'no_ckpt'}",
    ],
  }
  for needle, argv in cases.items():
    assert cli.main(argv) == 2, needle
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("python -m phi1_jax.decontam: error:") and needle in err, (
      needle,
      err,
    )
  assert (foreign / "notes.txt").read_text() == "mine" and sorted(os.listdir(foreign)) == ["notes.txt"]
  assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


def test_each_input_kept_apart_and_packed_as_a_folder(tmp_path, small_tokenizer, capsys):
  """Code (.jsonl.gz) and exercises (a folder of .py) land in clean/code/ and clean/exercises/, the
  summary says so, progress counts compressed bytes (<= 100%), and pack reads clean/code as it is."""
  from data_fixtures import code_docs
  from phi1_jax.data.pack import pack

  code = code_docs(400, "code")
  (tmp_path / "code.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(d) + "\n" for d in code).encode()))
  exercises = tmp_path / "exercises"
  exercises.mkdir()
  for i in range(3):
    (exercises / f"ex{i}.py").write_text(f"def square_{i}(x):\n  # x times x\n  return x * x + {i}\n")
  out = tmp_path / "out"
  assert (
    cli.main(["--input", str(tmp_path / "code.jsonl.gz"), str(exercises), f"--out={out}", "--benchmarks=humaneval"])
    == 0
  )
  printed = capsys.readouterr().out
  kept = {
    name: [d["id"] for p in sorted((out / "clean" / name).glob("*.jsonl.gz")) for d in _read_jsonl(p)]
    for name in ("code", "exercises")
  }
  assert sorted(kept["code"]) == sorted(d["id"] for d in code)
  assert sorted(kept["exercises"]) == [f"exercises/ex{i}.py" for i in range(3)]
  manifest = json.loads((out / "manifest.json").read_text())
  assert [(o["folder"], o["kept"]) for o in manifest["outputs"]] == [
    (str(out / "clean/code"), 400),
    (str(out / "clean/exercises"), 3),
  ]
  assert f"{tmp_path / 'code.jsonl.gz'}: 400 documents kept -> {out / 'clean/code'}/" in printed
  assert f"{exercises}: 3 documents kept -> {out / 'clean/exercises'}/" in printed
  shown = [int(p) for p in re.findall(r"^decontam task 0/1: .* \((\d+)%\)", printed, re.M)]
  assert shown and shown[-1] == 100 and max(shown) <= 100, printed
  packed = pack([out / "clean" / "code"], small_tokenizer, 32, tmp_path / "packed", eval_fraction=0.0, workers=1)
  assert packed["documents"] == 400


class _CharGramEmbedder:
  """A small real embedder for the L2 method: hashed character 4-gram counts (stands for --embed_checkpoint from Python)."""

  def embed(self, texts):
    out = np.zeros((len(texts), 256), np.float32)
    for i, text in enumerate(texts):
      t = " ".join(text.split())
      for j in range(len(t) - 3):
        out[i, hash(t[j : j + 4]) % 256] += 1
    return out


def test_embedding_distance_removes_a_near_copy_of_the_problem_text(tmp_path):
  refs = bench_lib.humaneval_references()
  target = refs[12]
  doc = {"id": "near", "text": target.text.replace("    ", "\t") + "\n# a comment\n", "source": "t", "meta": {}}
  other = {"id": "other", "text": Path(os.__file__).read_text()[:3000], "source": "t", "meta": {}}
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps(d) + "\n" for d in (doc, other)))
  folder = tmp_path / "code"  # a folder of .py files, as pack reads it: a renamed copy of another problem
  folder.mkdir()
  (folder / "copy.py").write_text(fixture_lib.renamed_copy(refs[20].code, refs[20].functions, random.Random(0))[0])
  manifest = cli.run(
    [
      "--input",
      str(inp),
      str(folder),
      f"--out={tmp_path / 'out'}",
      "--benchmarks=humaneval",
      "--embed_max_l2=0.3",
      "--ast_tau=1.0",
    ],
    embedder=_CharGramEmbedder(),
  )
  removed = _read_jsonl(tmp_path / "out/removed.jsonl")
  assert [(r["id"], r["method"], r["task_id"]) for r in removed[1:]] == [("code/copy.py", "ast", refs[20].task_id)]
  removed = removed[:1]
  assert [r["id"] for r in removed] == ["near"]
  embed_match = next(m for m in removed[0]["matches"] if m["method"] == "embed")
  assert embed_match["task_id"] == target.task_id and embed_match["score"] <= 0.3
  report = json.loads((tmp_path / "out/report.json").read_text())
  assert report["problems"][target.task_id]["embed"]["id"] == "near"
  assert manifest["kept"] == 1


@pytest.mark.slow
def test_embed_checkpoint_runs_the_l2_method_with_the_curation_embedder(tmp_path, tiny_checkpoint):
  """`--embed_checkpoint` end to end: phi1_jax.stages.embed's Embedder on a tiny checkpoint, in the CLI's task
  process. A verbatim copy of a problem (prompt + solution) embeds to the problem's vector (L2 0)."""
  target = bench_lib.humaneval_references()[7]
  docs = [
    {"id": "copy", "text": target.text, "source": "t", "meta": {}},
    {"id": "other", "text": Path(os.__file__).read_text()[:3000], "source": "t", "meta": {}},
  ]
  inp = tmp_path / "in.jsonl"
  inp.write_text("".join(json.dumps(d) + "\n" for d in docs))
  out = tmp_path / "out"
  proc = run_module(
    "phi1_jax.decontam",
    "--input",
    str(inp),
    f"--out={out}",
    "--benchmarks=humaneval",
    f"--embed_checkpoint={tiny_checkpoint}",
    "--embed_max_len=256",
    "--embed_max_l2=0.001",
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  removed = _read_jsonl(out / "removed.jsonl")
  assert [r["id"] for r in removed] == ["copy"], removed
  embed_match = next(m for m in removed[0]["matches"] if m["method"] == "embed")
  assert embed_match["task_id"] == target.task_id and embed_match["score"] <= 0.001, embed_match
  report = json.loads((out / "report.json").read_text())
  assert report["flags"]["embed_checkpoint"] == str(tiny_checkpoint)
  assert report["counts"]["flagged_by"]["embed"] == 1, report["counts"]
  assert report["problems"][target.task_id]["embed"]["id"] == "copy"
  # every problem has a nearest document by L2 (the method scored them all), and the table shows it
  assert all(p["embed"] is not None for p in report["problems"].values())
  assert "embed (L2)" in (out / "report.md").read_text() and "L2 <= 0.001" in (out / "report.md").read_text()


def test_tree_edit_distance_matches_apted_and_the_prefilter_is_a_lower_bound():
  apted = pytest.importorskip("apted")
  from rapidfuzz.distance import Levenshtein

  class Labels(apted.Config):
    def rename(self, a, b):
      return int(a.name != b.name)

    def children(self, node):
      return node.children

  refs = bench_lib.humaneval_references()[:8]
  trees = [tree_lib.to_tree(bench_lib.solution_functions(r)[0]) for r in refs]
  index = tree_lib.TreeIndex([("x", t) for t in trees], min_rate=0.5)
  for a in trees[:4]:
    for b in trees[4:]:
      distance = tree_lib.tree_edit_distance(a, b)
      assert distance == apted.APTED(a, b, Labels()).compute_edit_distance()
      bound = Levenshtein.distance(index.encode(tree_lib.flatten(a)[0]), index.encode(tree_lib.flatten(b)[0]))
      assert bound <= distance


def test_statement_order_is_canonical_only_where_order_does_not_matter():
  def tree(src):
    return tree_lib.serialise(tree_lib.to_tree(ast.parse(src).body[0]))

  base = "def f(a, b):\n  x = a + 1\n  y = b * 2\n  z = [a]\n  z.append(y)\n  return x + y + z[0]\n"
  swapped = "def g(p, q):\n  '''doc'''\n  z = [p]\n  y = q * 2\n  x = p + 1\n  z.append(y)\n  return x + y + z[0]\n"
  dependent = "def f(a, b):\n  x = a + 1\n  z = [a]\n  z.append(y)\n  y = b * 2\n  return x + y + z[0]\n"
  assert tree(base) == tree(swapped)
  assert tree(base) != tree(dependent)  # y is read by z.append(y): moving its assignment after it changes the program
