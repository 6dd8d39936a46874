"""The paper's matrix (configs/recipes/tiny.py, made smaller with --set) on a corpus in The Stack v1's
parquet layout: every stage reads `content` / `hexsha`, a planted HumanEval solution is removed
before packing, and the report holds every variant with a number per seed."""

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import STDLIB
from helpers import REPO, repo_env
from test_parquet import write_stack_parquet

PACKAGES = ("json", "http", "email", "urllib", "logging", "collections", "asyncio")  # the tiny recipe's corpus


@pytest.mark.slow
def test_the_paper_matrix_runs_on_stack_parquet_and_decontaminates_it(tmp_path):
  from phi1_jax.eval.problems import load_humaneval
  from phi1_jax.recipe import results

  files = sorted(f for p in PACKAGES for f in (Path(STDLIB) / p).rglob("*.py") if f.stat().st_size > 0)
  docs = [{"id": hashlib.sha1(f.read_bytes()).hexdigest(), "text": f.read_text()} for f in files]
  problem = load_humaneval()["HumanEval/12"]
  planted = {"id": "f" * 40, "text": "import os\n\n" + problem.prompt + problem.canonical_solution}
  stack = write_stack_parquet(tmp_path / "python.parquet", docs[:30] + [planted] + docs[30:], row_group_size=16)
  root = tmp_path / "root"
  sets = [
    f"raw_inputs={stack}",
    "text_key=content",
    "id_key=hexsha",
    "seeds=0",
    "textbooks.n=20",
    "exercises.n=40",
    "embed.embedder_steps=5",
    "pretrain.total_steps=10",
    "pretrain.batch_size=8",
    "finetune.total_steps=5",
    "finetune.batch_size=4",
    "eval.limit=4",
    "eval.max_new_tokens=8",
  ]
  argv = [sys.executable, "-m", "phi1_jax.recipe", "run", "configs/recipes/tiny.py", f"--root={root}", "--quiet"]
  argv += [f"--set={s}" for s in sets]
  proc = subprocess.run(argv, cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

  index = json.loads((root / "recipes" / "tiny.json").read_text())
  raw_out = root / index["steps"]["decontam/raw"]["folder"] / "out"
  removed = [json.loads(line) for line in (raw_out / "removed.jsonl").read_text().splitlines()]
  assert [(r["id"], r["task_id"]) for r in removed] == [(planted["id"], "HumanEval/12")]
  clean = [json.loads(line) for p in sorted(raw_out.glob("clean/**/*.jsonl.gz")) for line in gzip.open(p, "rt")]
  assert sorted(d["id"] for d in clean) == sorted(d["id"] for d in docs)  # hexsha ids, every other row kept

  gathered = results.gather(root, "tiny")
  assert [v["name"] for v in gathered["variants"]] == ["raw", "filtered", "filtered+textbooks"]
  for variant in gathered["variants"]:
    assert variant["seeds"] == [0] and variant["tokens_seen"] == 10 * 8 * 128
    for metric in ("pass@1 base", "pass@1 finetuned", "canonical loss base", "canonical loss finetuned"):
      assert variant["metrics"][metric][0] is not None, (variant["name"], metric)
    assert all(e is not None and e > 0 for e in variant["epochs"].values()), variant
  assert all(s["status"] == "done" for s in gathered["steps"])
  filtered = next(s for s in gathered["steps"] if s["name"] == "filter")["counts"]
  assert 0 < filtered["documents_kept"] < filtered["documents_read"] == len(docs) + 1
